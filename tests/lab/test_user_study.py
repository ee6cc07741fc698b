"""The user's study: `normlab compare --model MODEL --data DATA` on a model file and data made by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from normlab.cli import main
from normlab.lab import Execution, Options, UserSpec, compare_model
from normlab.lab.config import make_config
from normlab.lab.store import Store
from normlab.lab.sweep.runner import run_sweep
from normlab.lab.training.models import NotApplicable
from normlab.lab.training.train import run
from normlab.lab.training.user_model import build_user_model

INPUTS = Path(__file__).with_name("user_inputs.py")
MODEL, DATA = f"{INPUTS}:convnet", f"{INPUTS}:digits"


def test_compare_on_your_model_end_to_end(tmp_path, capsys):
    out = tmp_path / "results"
    args = [
        "compare",
        "--model",
        MODEL,
        "--data",
        DATA,
        "--norms",
        "batch,group",
        "--batch-sizes",
        "4,32",
        "--seeds",
        "2",
        "--steps",
        "60",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "recommended at batch size 4:" in printed and "recommended at batch size 32:" in printed
    payload = json.loads((out / "results.json").read_text())
    claims = {v["claim"]: v["outcome"] for v in payload["verdicts"]["your-model"]}
    assert set(claims) == {
        "group beats batch at batch size 4 on your model",
        "group beats batch at batch size 32 on your model",
    }
    assert [r.split(":")[0] for r in payload["recommendations"]["your-model"]] == ["batch size 4", "batch size 32"]
    runs = payload["runs"]
    finals = [r for r in runs if r["role"] == "final"]
    assert len(finals) == 2 * 2 * 2 and {r["config"]["norm"] for r in finals} == {"batch", "group"}
    for r in finals:
        assert 0 <= r["metrics"]["test_acc"] <= 1 and r["metrics"]["step_seconds"] > 0 and r["metrics"]["memory_mb"] > 0
        assert r["config"]["swap_from"] == ([] if r["config"]["norm"] == "batch" else ["batch"])
    selection = [r for r in runs if r["role"] == "selection"]
    assert selection and all("valid_acc" in r["metrics"] and "test_acc" not in r["metrics"] for r in selection)
    chosen = payload["fairness"]["your-model"]["choices"]
    assert len(chosen) == 4 and all(c["chosen"] in c["grid"] for c in chosen)
    page = (out / "index.html").read_text()
    assert "Your model:" in page and "Recommendation" in page and "BatchNorm2d -&gt; GroupNorm" in page
    assert not any((out / "checkpoints").glob("*.pt"))  # removed once their rows were stored
    assert main(["advise", "--arch", "cnn", "--batch-size", "4", "--report", str(out)]) == 0
    assert "[your-model] recommended at batch size 4:" in capsys.readouterr().out
    assert main(args) == 0  # a rerun resumes: everything is stored already
    assert "0 ran now" in capsys.readouterr().out


def test_a_method_that_fails_at_a_batch_size_is_a_result_not_a_crash(tmp_path):
    config = make_config(
        "user", study="t", norm="batch", seed=0, model=f"{INPUTS}:pooled_bn", data=DATA, batch_size=1, steps=5
    )
    with pytest.raises(NotApplicable, match="fails at batch size 1: Expected more than 1 value per channel"):
        run(config)
    report = run_sweep([config], tmp_path / "r.sqlite", progress=False)
    assert report.ran == 1 and not report.failed
    with Store(tmp_path / "r.sqlite") as store:
        (record,) = store.records()
    assert record.status == "not_applicable" and "fails at batch size 1" in record.note


def test_methods_start_from_the_same_weights_and_batches():
    base = dict(study="t", seed=3, model=MODEL, data=DATA, batch_size=4, steps=3)
    models = {}
    for norm, sources in (("batch", []), ("group", ["batch"])):
        torch.manual_seed(3)
        models[norm] = build_user_model(make_config("user", norm=norm, swap_from=sources, **base))
    assert isinstance(models["group"][1], torch.nn.GroupNorm) and isinstance(models["batch"][1], torch.nn.BatchNorm2d)
    for i in (0, 3, 8):  # the convolutions and the head
        for a, b in zip(models["batch"][i].parameters(), models["group"][i].parameters(), strict=True):
            assert torch.equal(a, b)


def test_a_task_with_its_own_loss_is_judged_by_it(tmp_path):
    spec = UserSpec(
        model=f"{INPUTS}:regressor",
        data=f"{INPUTS}:regression",
        norms=("layer", "rms"),
        batch_sizes=(16,),
        steps=40,
        optimizer="adamw",
    )
    _, results, ok = compare_model(spec, tmp_path, Options(seeds=2), Execution(progress=False), log=lambda *_: None)
    assert ok
    result = results["your-model"]
    assert [v.claim for v in result.verdicts] == ["rms beats layer at batch size 16 on your model"]
    assert "test loss" in result.training.target and result.fairness.choices[0].chosen is not None
    payload = json.loads((tmp_path / "results.json").read_text())
    final = [r for r in payload["runs"] if r["role"] == "final"]
    assert all("test_loss" in r["metrics"] and "test_acc" not in r["metrics"] for r in final)


def _store_with_a_row(out: Path) -> bytes:
    with Store(out / "results.sqlite") as store:
        store.put(make_config("classify", study="x", norm="batch", seed=0), {"test_acc": 0.5}, {}, 1.0)
    return (out / "results.sqlite").read_bytes()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"--model": f"{INPUTS}:nope"}, "has no callable nope"),
        ({"--model": f"{INPUTS}:not_a_module"}, "returned a str, not a torch.nn.Module"),
        ({"--model": f"{INPUTS}:no_norm"}, "has no normalization layer normlab can swap"),
        ({"--data": f"{INPUTS}:wrong_shape"}, "its forward fails on the data's input of shape (2, 3, 8, 8)"),
        ({"--data": f"{INPUTS}:many_labels"}, "labels run from 0 to 19, but the model outputs 10 classes"),
        ({"--data": "cifar10:EMPTY"}, "is empty"),
        ({"--data": "imagefolder:/no/such/dir"}, "is not a directory"),
        ({"--batch-sizes": "0,4"}, "--batch-sizes must be positive integers"),
        ({"--batch-sizes": "4,x"}, "--batch-sizes must be comma-separated integers"),
        ({"--batch-sizes": "5000"}, "larger than the 480 training examples"),
        ({"--norms": "batch,nosuchnorm"}, "nosuchnorm"),
        ({"--loader-workers": "-1"}, "--loader-workers must be at least 0, got -1"),
        ({"--model": None}, "--batch-sizes, --steps: only with --model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_run(tmp_path, capsys, change, expected):
    out = tmp_path / "out"
    out.mkdir()
    before = _store_with_a_row(out)
    (tmp_path / "EMPTY").mkdir()
    options = {"--model": MODEL, "--data": DATA, "--norms": "batch,group", "--batch-sizes": "4", "--steps": "5"}
    options.update({k: (v.replace("EMPTY", str(tmp_path / "EMPTY")) if v else v) for k, v in change.items()})
    args = ["compare", "--out", str(out), "--no-progress"] + [x for k, v in options.items() if v for x in (k, v)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert (out / "results.sqlite").read_bytes() == before and not (out / "figures").exists()


def _cifar10_folder(path: Path, train: int = 64, test: int = 32) -> Path:
    """A CIFAR-10 directory in the python pickle format (random images), for the cifar10 reader."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    path.mkdir()
    for name, n in (("data_batch_1", train), ("test_batch", test)):
        with open(path / name, "wb") as fh:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    b"labels": [int(v) for v in rng.integers(0, 10, n)],
                },
                fh,
            )
    return path


def test_the_readme_command_on_torchvision_resnet18_and_a_cifar10_folder(tmp_path, capsys):
    pytest.importorskip("torchvision")
    data = _cifar10_folder(tmp_path / "cifar-10")
    out = tmp_path / "results"
    assert main(
        [
            "compare",
            "--model",
            "torchvision:resnet18",
            "--model-args",
            "num_classes=10",
            "--data",
            f"cifar10:{data}",
            "--norms",
            "batch,layer2d",
            "--batch-sizes",
            "4",
            "--seeds",
            "2",
            "--steps",
            "2",
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-progress",
        ]
    ) in (0, 1)
    payload = json.loads((out / "results.json").read_text())
    assert {r["config"]["norm"] for r in payload["runs"] if r["role"] == "final"} == {"batch", "layer2d"}
    assert "20 BatchNorm2d -&gt; LayerNorm2d" in (out / "index.html").read_text()


def test_bf16_autocast_channels_last_and_loader_workers_train_on_cpu():
    config = make_config(
        "user",
        study="t",
        norm="group",
        seed=0,
        model=MODEL,
        data=DATA,
        swap_from=["batch"],
        batch_size=16,
        steps=100,
        lr=0.1,
        amp=True,
        channels_last=True,
        loader_workers=1,
    )
    metrics, _ = run(config)
    assert metrics["diverged"] == 0.0 and metrics["test_acc"] > 0.2  # chance: 0.1


def test_a_cuda_device_that_is_not_there_is_one_line(capsys):
    assert (
        main(
            [
                "compare",
                "--model",
                MODEL,
                "--data",
                DATA,
                "--norms",
                "batch",
                "--batch-sizes",
                "4",
                "--device",
                "cuda:7",
            ]
        )
        == 2
    )
    assert "--device cuda:7: no such CUDA device is available" in capsys.readouterr().err
