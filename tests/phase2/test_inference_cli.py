"""Evaluate, generate and diagnostics on a tiny checkpoint trained here on real prose."""

import json
import subprocess
import sys

import pytest
import torch

from common.config import compose
from phase2 import diagnostics, evaluate, generate
from phase2.baseline import TransformerLM, TransformerPP
from phase2.data import builtin_articles
from phase2.generate import Sampling, filter_logits, generate_ids
from phase2.inference import load_language_model
from phase2.train import train


def _train(root, model: list[str], name: str):
    summary = train(
        compose(
            "phase2",
            [
                *model,
                "data=file",
                f"data.path={root / 'text.txt'}",
                "seq_len=32",
                "batch_size=8",
                "loop.max_steps=12",
                "loop.eval_every=12",
                "loop.progress=false",
                "eval.max_batches=null",
                "logger=none",
                f"checkpoint.dir={root / name}",
                f"paths.output_root={root / 'outputs'}",
                "device=cpu",
            ],
        )
    )
    return summary, root / name / "last.pt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    (root / "text.txt").write_text("\n\n".join(builtin_articles()[:6]))
    summary, ckpt = _train(root, ["model=debug"], "phase2")
    return root, summary, ckpt


def test_evaluate_agrees_with_the_training_loss_on_the_same_text(trained):
    root, summary, ckpt = trained
    lm = load_language_model(ckpt)
    result = evaluate.evaluate_text(lm, evaluate.text_documents(str(root / "text.txt"), "val"))
    assert result["loss"] == pytest.approx(summary["final/val/loss"], rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(summary["final/val/bits_per_byte"], rel=1e-6)


def test_a_runs_test_numbers_are_the_final_weights_on_the_whole_test_split(trained):
    root, summary, ckpt = trained  # last.pt holds the final weights
    lm = load_language_model(ckpt)
    result = evaluate.evaluate_text(lm, evaluate.text_documents(str(root / "text.txt"), "test"))
    assert result["bits_per_byte"] == pytest.approx(summary["final/test/bits_per_byte"], rel=1e-6)
    assert summary["final/test/bits_per_byte"] != pytest.approx(summary["final/val/bits_per_byte"], rel=1e-3)


def test_greedy_stream_is_deterministic_and_equals_a_full_recompute(trained):
    lm = load_language_model(trained[2])
    prompt = torch.tensor([lm.tokenizer.encode("The history of the")])
    streamed = torch.stack(list(generate_ids(lm, prompt, Sampling(max_new_tokens=12, greedy=True))), 1)
    again = torch.stack(list(generate_ids(lm, prompt, Sampling(max_new_tokens=12, greedy=True))), 1)
    assert torch.equal(streamed, again)
    ids = prompt
    with torch.no_grad():
        for _ in range(12):  # re-reading the whole prefix for every token: the O(T) way the stream avoids
            ids = torch.cat([ids, lm.model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(streamed, ids[:, prompt.shape[1] :])


def test_text_streams_piece_by_piece_and_batches_match_single_prompts(trained):
    lm = load_language_model(trained[2])
    s = Sampling(max_new_tokens=10, greedy=True)
    pieces = list(generate.generate(lm, ["Alpha"], s))
    assert len(pieces) > 1 and all(i == 0 for i, _ in pieces)  # many arrivals, not one final string
    batch = {}
    for i, piece in generate.generate(lm, ["Alpha", "Omega", "Hi"], s):  # two of equal length, one not
        batch[i] = batch.get(i, "") + piece
    single = ["".join(p for _, p in generate.generate(lm, [q], s)) for q in ("Alpha", "Omega", "Hi")]
    assert [batch[i] for i in range(3)] == single


def test_sampling_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2, top_p=1.0)).sum() == 2
    probs = logits.softmax(-1)[0]
    kept = torch.isfinite(filter_logits(logits, top_k=0, top_p=0.8))[0]
    assert probs[kept].sum() >= 0.8 and probs[kept][:-1].sum() < 0.8  # the smallest prefix reaching 0.8
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=1e-6)).sum() == 1
    g = torch.Generator().manual_seed(0)
    draws = {generate.next_tokens(logits, Sampling(top_k=1), g).item() for _ in range(20)}
    assert draws == {0}
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=0).validate()


def test_stream_stops_at_the_model_positions(trained, capsys):
    lm = load_language_model(trained[2])
    n = lm.max_positions
    prompt = torch.zeros(1, n - 3, dtype=torch.long)
    produced = list(generate_ids(lm, prompt, Sampling(max_new_tokens=10, greedy=True)))
    assert len(produced) == 4  # n - 3 prompt positions + 3 fed back tokens fill n; the 4th is only predicted
    assert "reached n_seq" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positions"):
        list(generate_ids(lm, torch.zeros(1, n, dtype=torch.long), Sampling(max_new_tokens=1)))


@pytest.mark.parametrize("kind, model_class", [("transformer", TransformerLM), ("transformer_pp", TransformerPP)])
def test_baseline_checkpoint_evaluates_and_generates_without_a_state(trained, kind, model_class):
    root = trained[0]
    summary, ckpt = _train(
        root,
        [f"model={kind}", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.ffn_dim=64"],
        kind,
    )
    lm = load_language_model(ckpt)
    assert isinstance(lm.model, model_class) and not lm.streams
    result = evaluate.evaluate_text(lm, evaluate.text_documents(str(root / "text.txt"), "val"))
    assert result["loss"] == pytest.approx(summary["final/val/loss"], rel=1e-6)
    out = list(generate_ids(lm, torch.tensor([[65, 66]]), Sampling(max_new_tokens=5, greedy=True)))
    assert len(out) == 5


def test_diagnostics_write_plots_and_the_report(trained, tmp_path):
    root, _, ckpt = trained
    assert diagnostics.main([str(ckpt), "--text", str(root / "text.txt"), "--out", str(tmp_path)]) == 0
    for name in ("gamma_per_layer.png", "resonance_energy.png", "stability.png"):
        assert (tmp_path / name).stat().st_size > 5000
    report = json.loads((tmp_path / "comprehensive_report.json").read_text())
    assert report["model_statistics"]["num_layers"] == len(report["diagnostics"]) == 2
    layer = report["diagnostics"][0]
    assert layer["gamma"]["min"] > 0 and "mean_snr" in layer["snr_stats"]
    assert len(layer["stability_metrics"]["energy"]) == 32 // report["model_config"]["gate_interval"]


@pytest.mark.parametrize(
    "module, args, message",
    [
        ("phase2.evaluate", ["{missing}", "builtin"], "does not exist"),
        ("phase2.generate", ["{truncated}", "--prompt", "x"], "truncated"),
        ("phase2.diagnostics", ["{ckpt}", "--text", "{missing}"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_without_traceback(trained, tmp_path, module, args, message):
    root, _, ckpt = trained
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    paths = {"missing": tmp_path / "nope.pt", "truncated": truncated, "ckpt": ckpt}
    argv = [a.format(**paths) for a in args]
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr


def test_a_vanishing_temperature_samples_the_top_token_and_out_of_range_settings_are_named():
    logits = torch.tensor([[4.0, 3.0, -2.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    draws = {generate.next_tokens(logits, Sampling(temperature=1e-45), g).item() for _ in range(10)}
    assert draws == {0}  # (logits / 1e-45) would be inf - inf = nan inside the softmax
    with pytest.raises(ValueError, match=r"--seed=100000000000000000000000 must be 0 to 2\^63 - 1"):
        Sampling(seed=10**23).validate(prefix="--")
    with pytest.raises(ValueError, match="sample.temperature=inf must be a finite number > 0$"):
        Sampling(temperature=float("inf")).validate(prefix="sample.")


def test_generate_piped_into_head_ends_quietly(trained):
    _, _, ckpt = trained
    done = subprocess.run(
        f"{sys.executable} -m phase2.generate {ckpt} --prompt 'The ' --max-new-tokens 3000 --device cpu | head -c 5",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert len(done.stdout) == 5 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
