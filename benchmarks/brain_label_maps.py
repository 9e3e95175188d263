"""The label maps the shipped brain model trains on, written beside the run (never committed).

    python3 benchmarks/brain_label_maps.py --output runs/brain_model

Writes, on the network's 64^3 grid at 3 mm (every second voxel of the shared 128^3 MNI152 grid
at 1.5 mm, as ``brains.downsample``):

- ``label_maps.npz``: ``segs`` of the 20 public SynthSeg label maps
  (``../shared/data/synthseg20_128.npz``, Apache-2.0) and of the benchmark's 6 training subjects
  (``fstrain9_128.npz``; its 3 test subjects are left out), skull-stripped: the extra-cerebral
  5xx labels and label 24 (CSF, which covers all extra-cerebral CSF in the SynthSeg maps and a
  few hundred voxels in the benchmark's) set to 0. ``labels`` are the structures the loss
  compares: the benchmark's 30 Dice labels less 24 and the choroid plexus (31, 63), which the
  SynthSeg maps do not label.
- ``val.npz``: images and label maps of the 6 training subjects, the validation pairs of the
  run's log (their label maps also train; nothing is chosen on them).
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import brains  # noqa: E402  (numpy only)

SYNTHSEG = os.path.join(ROOT, "..", "shared", "data", "synthseg20_128.npz")
NOT_BRAIN = 24  # CSF: extra-cerebral in the SynthSeg maps
UNLABELLED = (24, 31, 63)  # Dice labels the SynthSeg maps do not hold


def skull_stripped(segs: np.ndarray) -> np.ndarray:
    """Label maps with the extra-cerebral labels (5xx and ``NOT_BRAIN``) set to 0, as uint8."""
    return np.where((segs >= 500) | (segs == NOT_BRAIN), 0, segs).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=brains.DATA, help="the fstrain9_128.npz file")
    parser.add_argument("--synthseg", default=SYNTHSEG, help="the synthseg20_128.npz file")
    parser.add_argument("--output", required=True, help="folder to write the two files into")
    args = parser.parse_args()
    for path in (args.data, args.synthseg):
        if not os.path.exists(path):
            sys.exit(f"brain_label_maps.py: error: {path} not found (expected in ../shared/data)")
    with np.load(args.data) as bench, np.load(args.synthseg) as public:
        vols, segs = brains.downsample(bench["vols"][:brains.NUM_TRAIN],
                                       bench["segs"][:brains.NUM_TRAIN], 2)
        public_segs = public["segs"][:, 1::2, 1::2, 1::2]  # the voxels brains.downsample keeps
        labels = [int(x) for x in bench["labels"] if x not in UNLABELLED]
    os.makedirs(args.output, exist_ok=True)
    maps = skull_stripped(np.concatenate([public_segs, segs]))
    names = [brains.FREESURFER_NAMES[label] for label in labels]
    for name, arrays in (("label_maps", {"segs": maps}),
                         ("val", {"vols": vols, "segs": skull_stripped(segs)})):
        path = os.path.join(args.output, f"{name}.npz")
        np.savez(path + ".tmp.npz", **arrays, labels=labels, label_names=names, spacing=3.0)
        os.replace(path + ".tmp.npz", path)
        print(f"wrote {path}: {', '.join(f'{k} {v.shape}' for k, v in arrays.items())}")


if __name__ == "__main__":
    main()
