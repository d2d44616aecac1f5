"""Open a drive, run DeepLab and Mask R-CNN, fuse their masks with the LiDAR and record, frame by
frame, with the typed stages `segfuse run` wires into its graph (pipeline/stages.py). No threads
here; pipeline.graph runs the same stages concurrently.

    python examples/segment_fuse_record.py DRIVE OUT_DIR [--frames N]
"""
import argparse

from engines.factory import create_engine
from pipeline.config import data_path, load_taxonomy
from pipeline.fusion.config import FusionConfig
from pipeline.sinks.recorder import Recorder
from pipeline.sources import InputConfig, open_sources
from pipeline.stages import Fuse, Infer, Postprocess, Preprocess
from pipeline.sync import SyncConfig, Synchronizer
from pipeline.types import FrameResult, ModelOutputs

p = argparse.ArgumentParser()
p.add_argument("drive"), p.add_argument("out"), p.add_argument("--frames", type=int)
args = p.parse_args()

taxonomy = load_taxonomy()
drive = open_sources(InputConfig(uri=args.drive))       # a segfuse sim drive, rosbag2, ROS 1 bag, KITTI raw
models = {"deeplab": "models/deeplabv3plus_mobilenet_v3_small.onnx", "maskrcnn": "models/maskrcnn_mobilenet_v3_small_fpn.onnx"}
engines = {kind: create_engine({"model": str(data_path(m)), "threads": 1}) for kind, m in models.items()}
preprocess = Preprocess({kind: e.input_hw for kind, e in engines.items()}, resize="letterbox")
infer = [Infer(kind, e) for kind, e in engines.items()]
postprocess = Postprocess(taxonomy, score_threshold=0.5, mask_threshold=0.5)
fuse = Fuse(drive.rig, FusionConfig(), taxonomy)
sync = Synchronizer(SyncConfig(lidar_offset_ms=50),     # the sim's LiDAR faces the camera half a sweep in
                    has_lidar=drive.lidar_id is not None, has_poses=drive.sources[0].info.has_poses, live=False)
recorder = Recorder(args.out, drive.rig, taxonomy, camera_id=drive.camera_id, lidar_id=drive.lidar_id,
                    run_info={"masks": "engines", "masks_label": "examples/segment_fuse_record.py"})


def synced_frames():                                     # camera frames paired with their sweep and poses
    for item in drive.sources[0]:
        yield from (frame for frame, _ in sync.push(item))
    yield from (frame for frame, _ in sync.flush())


for i, frame in enumerate(synced_frames()):
    batches = preprocess(frame)                                       # SyncedFrame -> Batches
    outputs = ModelOutputs.join([model(batches) for model in infer])  # Batches -> ModelOutput, per model
    masks = postprocess(batches, outputs)                             # -> Masks at camera resolution
    fusion = fuse(frame, masks)                                       # SyncedFrame, Masks -> FusionResult
    recorder.write(FrameResult(i, frame, masks, fusion, received_ns=0))
    n = 0 if fusion is None else int((fusion.cloud.class_id != taxonomy.ignore_id).sum())
    print(f"frame {i}: {n} points labelled, {0 if fusion is None else len(fusion.objects)} objects")
    if args.frames and i + 1 >= args.frames:
        break
print(f"recording: {recorder.close()}")
drive.close()
for e in engines.values():
    e.close()
