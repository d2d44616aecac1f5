"""Fuse masks you already have with a LiDAR cloud: a semantic PNG of class ids (configs/classes.yaml)
and, optionally, an instance PNG of ids (0 = none; each id's class is the semantic class under
most of its pixels). The same fusion `segfuse run` applies to the models' masks.

    python examples/fuse_my_masks.py RIG CLOUD SEMANTIC_PNG [INSTANCE_PNG] --out fused.npz
"""
import argparse

import numpy as np

from calibration.io import load_rig
from pipeline.cloud_io import read_cloud
from pipeline.config import load_taxonomy
from pipeline.fusion.config import FusionConfig
from pipeline.fusion.frame import CameraMasks, fuse_frame
from pipeline.fusion.label import InstanceMap
from pipeline.fusion.offline import read_label_png
from pipeline.types import LidarSweep

p = argparse.ArgumentParser()
p.add_argument("rig"), p.add_argument("cloud"), p.add_argument("semantic"), p.add_argument("instances", nargs="?")
p.add_argument("--out", default="fused.npz")
args = p.parse_args()

taxonomy = load_taxonomy()
rig = load_rig(args.rig)                                 # rig YAML, KITTI calib, a bag's CameraInfo + /tf_static
camera, lidar = rig.cameras[0], rig.lidars[0]
semantic = read_label_png(args.semantic, field="semantic", expect_shape=(camera.height, camera.width))
instances = None
if args.instances:
    ids = read_label_png(args.instances, field="instances", expect_shape=semantic.shape)
    instances = InstanceMap.from_id_image(ids, semantic)
sweep = LidarSweep(lidar.name, 0, read_cloud(args.cloud).points)     # .bin, .pcd, .ply, .npy
masks = CameraMasks(camera.name, 0, semantic, instances)
result = fuse_frame(sweep, [masks], rig, FusionConfig(ego_motion=False), taxonomy)

c = result.cloud
np.savez(args.out, points=c.points, class_id=c.class_id, instance_id=c.instance_id, flags=c.flags)
for cid, n in zip(*np.unique(c.class_id[c.class_id != taxonomy.ignore_id], return_counts=True)):
    print(f"{taxonomy.names[cid]:<14}{n:>8} points")
for obj in result.objects:
    print(f"{taxonomy.names[obj.class_id]:<14} at {obj.range_m:5.1f} m, {obj.num_points} points")
print(f"{len(result.lanes)} lane lines; fused cloud: {args.out}")
