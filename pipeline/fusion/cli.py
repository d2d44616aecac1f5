"""`segfuse fuse`: fuse masks a user already has with a LiDAR cloud, offline."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fuse", help="fuse existing semantic/instance masks with a LiDAR cloud",
                       description="Label every LiDAR point from a semantic PNG (class ids) and optionally an "
                                   "instance PNG (ids) with its JSON of classes and scores; write the fused cloud "
                                   "(.npz and a .ply coloured by class), 3D objects and lane lines as JSON.")
    p.add_argument("--rig", required=True, help="rig YAML, KITTI object calib .txt, KITTI raw calib dir, or bag")
    p.add_argument("--cloud", required=True, help="point cloud: KITTI .bin, .pcd, .ply or .npy")
    p.add_argument("--semantic", required=True, help="PNG of class ids (configs/classes.yaml)")
    p.add_argument("--instances", help="PNG of instance ids (0 = none)")
    p.add_argument("--instances-meta", help='JSON {"<id>": {"class": name, "score": 0..1}}')
    p.add_argument("--cloud-fields", help="layout of a raw float32 .bin, e.g. x,y,z,intensity,ring (default: a "
                                          "<cloud>.fields sidecar, else nuScenes for .pcd.bin, else KITTI x,y,z,i)")
    p.add_argument("--camera", help="rig camera the masks belong to (default: the rig's only camera; on KITTI "
                                    "rigs the left colour camera cam2/cam02; else the first)")
    p.add_argument("--no-occlusion", action="store_true", help="turn the depth test off")
    p.add_argument("--edge", choices=["none", "erode", "depth_gate"], default="none", help="mask-edge handling")
    p.add_argument("--out", required=True, help="output directory (refused if not empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier fused outputs in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.fusion.config import FusionConfig
    from pipeline.fusion.offline import fuse_files

    from pipeline.outputs import claim_out_dir

    claim_out_dir(args.out, overwrite=args.overwrite, outputs=("fused.npz", "fused.ply", "objects.json", "lanes.json"))
    cfg = FusionConfig(ego_motion=False, occlusion=not args.no_occlusion, edge_mode=args.edge)
    summary = fuse_files(rig_path=args.rig, cloud_path=args.cloud, semantic_path=args.semantic,
                         instances_path=args.instances, instances_meta_path=args.instances_meta,
                         out=args.out, camera=args.camera, cfg=cfg,
                         cloud_fields=args.cloud_fields)
    print(summary.render())
    return 0
