"""open_writer / open_drive: atomic output, refusing existing output, bad frames and
parameters, and corrupt frames that are skipped and counted rather than ending a read."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.drive.io import detect_format, open_drive, open_writer
from pipeline.drive.synth import make_calib, make_frame, make_meta
from pipeline.errors import ConfigError, InputDataError

FORMATS = ["rosbag2", "kitti-raw"]


def _siblings(out):
    return sorted(p.name for p in out.parent.iterdir())


@pytest.mark.parametrize("fmt", FORMATS)
def test_exception_mid_write_leaves_no_drive(tmp_path, fmt):
    calib = make_calib()
    out = tmp_path / "drive"
    with pytest.raises(RuntimeError, match="renderer crashed"):
        with open_writer(out, calib, make_meta(3), format=fmt) as writer:
            writer.write(make_frame(calib, 0, 100))
            assert not out.exists()                      # built aside, under a partial name
            assert _siblings(out) == [f"drive.partial-{__import__('os').getpid()}"]
            raise RuntimeError("renderer crashed")
    assert _siblings(out) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_ctrl_c_mid_write_leaves_no_drive(tmp_path, fmt):
    calib = make_calib()
    out = tmp_path / "drive"
    with pytest.raises(KeyboardInterrupt):
        with open_writer(out, calib, make_meta(3), format=fmt, background=True) as writer:
            writer.write(make_frame(calib, 0, 100))
            writer.write(make_frame(calib, 1, 100))
            raise KeyboardInterrupt
    assert _siblings(out) == []


def test_a_killed_write_is_not_a_drive(tmp_path):
    calib = make_calib()
    out = tmp_path / "drive"
    writer = open_writer(out, calib, make_meta(1))
    writer.write(make_frame(calib, 0, 100))
    # as if the process died here: the partial folder stays, clearly named, and is refused
    partial = writer.staging_dir
    assert partial.name.startswith("drive.partial-") and not out.exists()
    with pytest.raises(InputDataError, match="unfinished"):
        open_drive(partial)
    with pytest.raises(InputDataError, match="unfinished"):
        open_drive(partial / "drive")
    writer.abort()
    assert _siblings(out) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_existing_output_is_refused_unless_overwrite(tmp_path, fmt):
    calib = make_calib()
    out = tmp_path / "drive"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(ConfigError) as err:
        open_writer(out, calib, make_meta(1), format=fmt)
    assert err.value.path == str(out)
    assert (out / "old.txt").read_text() == "keep me"

    # overwrite, but the write fails: the old output survives
    with pytest.raises(RuntimeError):
        with open_writer(out, calib, make_meta(1), format=fmt, overwrite=True) as writer:
            writer.write(make_frame(calib, 0, 100))
            raise RuntimeError
    assert (out / "old.txt").read_text() == "keep me"

    with open_writer(out, calib, make_meta(1), format=fmt, overwrite=True) as writer:
        writer.write(make_frame(calib, 0, 100))
    assert not (out / "old.txt").exists()
    assert detect_format(out) == fmt and _siblings(out) == ["drive"]
    assert len(open_drive(out)) == 1


def test_bad_parameters_are_config_errors(tmp_path):
    calib = make_calib()
    with pytest.raises(ConfigError, match="unknown drive format") as err:
        open_writer(tmp_path / "d", calib, make_meta(1), format="bag1")
    assert err.value.field == "format"
    with pytest.raises(ConfigError, match="compression"):
        open_writer(tmp_path / "d", calib, make_meta(1), compression="brotli")
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == []
    with open_writer(tmp_path / "d", calib, make_meta(1)) as writer:
        writer.write(make_frame(calib, 0, 100))
    with pytest.raises(ConfigError, match="on_error"):
        next(open_drive(tmp_path / "d").frames(on_error="ignore"))


@pytest.mark.parametrize("background", [False, True])
def test_bad_frames_are_refused(tmp_path, background):
    calib = make_calib()
    with pytest.raises(InputDataError, match="in order") as err:
        with open_writer(tmp_path / "a", calib, make_meta(2), background=background) as writer:
            writer.write(make_frame(calib, 1, 100))
    assert err.value.field == "index"

    bad = make_frame(calib, 1, 100)
    bad.camera.image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(InputDataError) as err:
        with open_writer(tmp_path / "b", calib, make_meta(2), format="kitti-raw", background=background) as writer:
            writer.write(make_frame(calib, 0, 100))
            writer.write(bad)      # in the background, raised by close() at the end of the block
    assert err.value.field == "camera.image"
    assert list(tmp_path.iterdir()) == []


def test_missing_and_unknown_inputs(tmp_path):
    with pytest.raises(InputDataError, match="not found") as err:
        open_drive(tmp_path / "nope")
    assert err.value.path == str(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="not a drive"):
        open_drive(tmp_path / "empty")
    (tmp_path / "x.bag").write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(InputDataError, match="not a drive"):
        open_drive(tmp_path / "x.bag")
    (tmp_path / "x.mcap").write_bytes(b"not an mcap at all")
    with pytest.raises(InputDataError) as err:
        open_drive(tmp_path / "x.mcap")
    assert err.value.path == str(tmp_path / "x.mcap")


@pytest.fixture()
def kitti_drive(tmp_path):
    calib = make_calib()
    frames = [make_frame(calib, i, 300) for i in range(4)]
    out = tmp_path / "drive"
    with open_writer(out, calib, make_meta(4), format="kitti-raw") as writer:
        for frame in frames:
            writer.write(frame)
    return out, frames


def test_corrupt_frames_are_skipped_and_counted(kitti_drive):
    out, frames = kitti_drive
    scan = out / "velodyne_points" / "data" / "0000000001.bin"
    scan.write_bytes(scan.read_bytes()[:-3])                      # not a multiple of 16 bytes
    png = out / "image_02" / "data" / "0000000002.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)            # undecodable

    drive = open_drive(out)
    read = list(drive.frames(on_error="skip"))
    assert [f.index for f in read] == [0, 3]
    np.testing.assert_array_equal(read[1].lidar.points, frames[3].lidar.points)
    assert drive.num_skipped == 2
    assert [(s.index, s.path) for s in drive.skipped] == [(1, str(scan)), (2, str(png))]
    assert "multiple of 16" in drive.skipped[0].reason

    with pytest.raises(InputDataError) as err:
        list(drive.frames(on_error="raise"))
    assert err.value.path == str(scan) and err.value.field == "velodyne_points"
    assert str(scan) in str(err.value)
    with pytest.raises(InputDataError) as err:
        drive.frame(2)
    assert err.value.path == str(png)


def test_corrupt_ground_truth_files_name_the_file(kitti_drive):
    out, _frames = kitti_drive
    labels = out / "segfuse" / "labels" / "0000000000.label"
    labels.write_bytes(labels.read_bytes()[:-4])                  # one point short
    boxes = out / "segfuse" / "boxes" / "0000000003.json"
    boxes.write_text("{not json")
    drive = open_drive(out)
    assert [f.index for f in drive.frames(on_error="skip")] == [1, 2]
    assert [s.path for s in drive.skipped] == [str(labels), str(boxes)]
