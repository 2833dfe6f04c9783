"""Build the real-weight models the Lite bundle offers on its first, offline run.

    .venv/bin/python packaging/make_first_run_models.py [--out resources/first-run]

Made at build time from packages that ship real weights (never committed to the repo):

    mtcnn/   MTCNN face detector: facenet-pytorch 2.6.0's P-Net, R-Net and O-Net (MIT;
             weights ported by T. Esler from David Sandberg's facenet, MIT; the network is
             Zhang et al. 2016) exported to ONNX, with a model.toml for the ONNX cascade
             (engine.tasks.detectors.mtcnn_onnx). Needs torch and facenet-pytorch here; the
             bundle that ships the folder does not.

Each export is checked against the torch net on random inputs before it is kept. No real
captioner, segmenter or restorer weights are available offline on this build machine, so
the Lite bundle's other tasks offer the bundled self-test models and the hub catalog.
THIRD_PARTY_LICENSES at the repository root lists what is shipped and under which terms.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "resources" / "first-run"
MTCNN_TOML = '''task = "detect"
name = "MTCNN faces (real weights, ONNX)"
license = "mit"
commercial_use = true
description = "MTCNN face detection (Zhang et al. 2016) with facenet-pytorch's weights (MIT), on ONNX Runtime: Ocula's numpy port of facenet-pytorch's cascade."
output = "mtcnn"
graphs = { pnet = "pnet.onnx", rnet = "rnet.onnx", onet = "onet.onnx" }
input_layout = "NCHW"
range = [0, 255]
labels = ["face"]
min_face_size = 20
stage_thresholds = [0.6, 0.7, 0.7]
'''


def export_mtcnn(folder: Path) -> Path:
    import onnxruntime as ort
    import torch
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu").eval()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    specs = {"pnet": (mtcnn.pnet, (1, 3, 61, 47), {0: "batch", 2: "height", 3: "width"}),
             "rnet": (mtcnn.rnet, (3, 3, 24, 24), {0: "batch"}),
             "onet": (mtcnn.onet, (3, 3, 48, 48), {0: "batch"})}
    for name, (net, shape, axes) in specs.items():
        sample = torch.from_numpy(rng.uniform(-1, 1, shape).astype(np.float32))
        with torch.no_grad():
            reference = [o.numpy() for o in net(sample)]
        outputs = [f"out{i}" for i in range(len(reference))]
        path = folder / f"{name}.onnx"
        torch.onnx.export(net, (sample,), str(path), input_names=["input"], output_names=outputs,
                          dynamic_axes={"input": axes, **{o: {0: "batch"} for o in outputs}},
                          opset_version=17, dynamo=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        other = list(shape)
        other[0] = 2
        if name == "pnet":
            other[2:] = [97, 130]
        for probe in (sample.numpy(), rng.uniform(-1, 1, other).astype(np.float32)):
            with torch.no_grad():
                want = [o.numpy() for o in net(torch.from_numpy(probe))]
            got = session.run(None, {"input": probe})
            worst = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
            if worst > 1e-4:
                raise SystemExit(f"{name}: the ONNX export differs from torch by {worst}")
    (folder / "model.toml").write_text(MTCNN_TOML, encoding="utf-8")
    return folder


BUILDERS = {"mtcnn": export_mtcnn}


def build_all(out: Path = DEFAULT_OUT) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"generated_by": "packaging/make_first_run_models.py", "models": {}}
    for name, build in BUILDERS.items():
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        build(target)
        files = sorted(p for p in target.rglob("*") if p.is_file())
        for file in files:
            file.chmod(0o644)
        manifest["models"][name] = {"path": name, "bytes": sum(p.stat().st_size for p in files)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        manifest = build_all(args.out)
    except ImportError as exc:
        print(f"make_first_run_models: needs torch and facenet-pytorch at build time ({exc})",
              file=sys.stderr)
        return 1
    for name, info in manifest["models"].items():
        print(f"{name:8} {info['bytes'] / 1e6:6.2f} MB  {args.out / info['path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
