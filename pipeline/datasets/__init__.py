"""Real dataset folders (KITTI object, nuScenes) and their labelled boxes as ground truth."""
