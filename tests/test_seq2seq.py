"""The sequence-to-sequence task: the encoder-decoder's teacher-forced and step paths agree,
padding never reaches a summary or an attention weight, beam width 1 is greedy, BLEU is
sacrebleu's, the addition and reverse data, TSV errors, and train / eval / translate end to
end through the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from cli_helpers import assert_one_line_error
from torch import Tensor

from grukit.cli import main
from grukit.errors import DataError
from grukit.runconfig import make_config
from grukit.tasks.seq2seq.data import (
    ParallelData,
    addition_pairs,
    load_parallel,
    read_tsv,
    reverse_pairs,
)
from grukit.tasks.seq2seq.model import Seq2Seq
from grukit.tasks.seq2seq.task import BLEU_MISSING, Seq2SeqConfig, Seq2SeqTask, corpus_bleu
from grukit.train import Trainer

PAD, BOS, EOS = 0, 1, 2


def model_config(**values: Any) -> SimpleNamespace:
    base = dict(variant="gru", hidden_size=7, num_layers=1, bidirectional=False, dropout=0.0,
                input_dropout=0.0, output_dropout=0.0, backend="auto")  # fmt: skip
    base.update(values)
    return SimpleNamespace(**base)


def make_model(seed: int = 0, attention: bool = False, **values: Any) -> Seq2Seq:
    torch.manual_seed(seed)
    model = Seq2Seq(11, 9, model_config(**values), embedding_size=5, attention=attention)
    return model.double().eval()


def random_batch(lengths: list[int], target_steps: int, seed: int = 1) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(3, 11, (max(lengths), len(lengths)), generator=g)
    for j, n in enumerate(lengths):
        source[n:, j] = PAD
    target_in = torch.randint(3, 9, (target_steps, len(lengths)), generator=g)
    target_in[0] = BOS
    return source, torch.tensor(lengths), target_in


# ---------------------------------------------------------------------------- the model

MODELS = [
    pytest.param({}, id="gru"),
    pytest.param({"attention": True}, id="gru-attention"),
    pytest.param({"attention": True, "bidirectional": True, "num_layers": 2}, id="bi-2-attention"),
    pytest.param({"variant": "lstm", "num_layers": 2}, id="lstm"),
    pytest.param({"variant": "mgu", "attention": True}, id="mgu-attention"),
]


@pytest.mark.parametrize("options", MODELS)
def test_teacher_forced_logits_equal_a_step_by_step_decode(options: dict) -> None:
    model = make_model(**options)
    source, lengths, target_in = random_batch([6, 3, 5], 5)
    forced = model(source, lengths, target_in)
    encoded = model.encode(source, lengths)
    state = model.initial_state(encoded)
    steps = []
    for t in range(target_in.shape[0]):
        logits, state, _ = model.decode_step(target_in[t], state, encoded)
        steps.append(logits)
    stepped = torch.stack(steps)
    assert forced.shape == (5, 3, 9)
    torch.testing.assert_close(forced, stepped, rtol=0, atol=1e-10)


def test_teacher_forcing_without_attention_runs_the_decoder_once(monkeypatch) -> None:
    model = make_model()
    source, lengths, target_in = random_batch([4, 2], 6)
    calls = {"step": 0, "forward": 0}
    step, forward = model.decoder.step, model.decoder.forward

    def count_step(*a: Any, **k: Any) -> Any:
        calls["step"] += 1
        return step(*a, **k)

    def count_forward(*a: Any, **k: Any) -> Any:
        calls["forward"] += 1
        return forward(*a, **k)

    monkeypatch.setattr(model.decoder, "step", count_step)
    monkeypatch.setattr(model.decoder, "forward", count_forward)
    model(source, lengths, target_in)
    assert calls == {"step": 0, "forward": 1}
    model(source, lengths, target_in, teacher_forcing=0.5)
    assert calls["step"] == 6


def test_teacher_forcing_zero_feeds_back_the_greedy_decode() -> None:
    model = make_model(seed=3, attention=True)
    source, lengths, _ = random_batch([5, 4, 2], 1)
    greedy = model.greedy(source, lengths, 6)  # (N, steps)
    T = greedy.shape[1]
    target_in = torch.full((T, 3), 5, dtype=torch.long)  # any tokens: ratio 0 never reads them
    target_in[0] = BOS
    logits = model(source, lengths, target_in, teacher_forcing=0.0)
    fed_back = logits.argmax(-1).transpose(0, 1)
    for row, own in zip(greedy.tolist(), fed_back.tolist(), strict=True):
        n = row.index(EOS) + 1 if EOS in row else T
        assert row[:n] == own[:n]


@pytest.mark.parametrize("attention", [False, True])
def test_padding_changes_no_summary_attention_or_output(attention: bool) -> None:
    model = make_model(seed=2, attention=attention, bidirectional=True)
    source, lengths, target_in = random_batch([3, 9, 7], 6, seed=4)
    alone = model.encode(source[:3, :1], lengths[:1])
    batched = model.encode(source, lengths)
    torch.testing.assert_close(batched.summary[:1], alone.summary, rtol=0, atol=1e-6)
    torch.testing.assert_close(batched.outputs[:3, :1], alone.outputs, rtol=0, atol=1e-6)
    assert batched.outputs[3:, 0].abs().max() == 0
    logits_alone = model(source[:3, :1], lengths[:1], target_in[:, :1])
    logits_batched = model(source, lengths, target_in)
    torch.testing.assert_close(logits_batched[:, :1], logits_alone, rtol=0, atol=1e-6)
    if attention:
        query = torch.randn(3, 7, dtype=torch.float64)
        _, w_alone = model.attend(query[:1], alone)
        _, w_batched = model.attend(query, batched)
        assert w_batched[0, 3:].abs().max() == 0  # padded steps get exactly nothing
        torch.testing.assert_close(w_batched[:1, :3], w_alone, rtol=0, atol=1e-6)
        torch.testing.assert_close(w_batched.sum(1), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("attention", [False, True])
def test_beam_width_one_is_the_greedy_decode(attention: bool) -> None:
    model = make_model(seed=5, attention=attention)
    with torch.no_grad():
        model.head.bias[EOS] += 2.0  # outputs that end, of several lengths
    source, lengths, _ = random_batch([6, 2, 4, 5, 3, 6], 1, seed=6)
    greedy = model.greedy(source, lengths, 12).tolist()
    ended = 0
    for j, row in enumerate(greedy):
        row = row[: row.index(EOS)] if EOS in row else row
        ended += len(row) < 12
        assert model.beam_search(source[: lengths[j], j], 1, 12) == row
    assert ended >= 2


def test_a_wider_beam_finds_an_output_at_least_as_likely() -> None:
    model = make_model(seed=7, attention=True)
    source, lengths, _ = random_batch([5], 1, seed=8)

    @torch.no_grad()
    def log_p(tokens: list[int]) -> float:
        target_in = torch.tensor([BOS, *tokens])[:, None]
        logits = model(source, lengths, target_in)
        logp = torch.log_softmax(logits[:, 0], -1)
        return float(logp.gather(1, torch.tensor([*tokens, EOS])[:, None]).sum())

    greedy = model.beam_search(source[:, 0], 1, 30, length_penalty=0.0)
    wide = model.beam_search(source[:, 0], 8, 30, length_penalty=0.0)
    assert log_p(wide) >= log_p(greedy) - 1e-9


# ---------------------------------------------------------------------------- BLEU


def test_bleu_is_sacrebleu_corpus_bleu() -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["the cat sat on the mat", "a dog barks loudly", "it is raining today in Paris"]
    refs = ["the cat sat on a mat", "the dog barks loudly", "it rains today in Paris"]
    expected = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert 0 < expected < 100
    assert corpus_bleu(hyps, refs) == pytest.approx(expected, abs=1e-12)
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)


def test_without_sacrebleu_bleu_is_one_sentence(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import fails
    result = corpus_bleu(["a b c d"], ["a b c d"])
    assert result == BLEU_MISSING and "sacrebleu" in result and result.count(".") == 1


# ---------------------------------------------------------------------------- data


def test_addition_pairs_are_seeded_sums_in_disjoint_splits() -> None:
    sizes = (3000, 300, 300)
    a = addition_pairs(sizes, seed=1)
    assert a == addition_pairs(sizes, seed=1)
    assert a != addition_pairs(sizes, seed=2)
    assert [len(a[s]) for s in ("train", "valid", "test")] == list(sizes)
    keys = {}
    for split, pairs in a.items():
        for source, target in pairs:
            x, y = source.split("+")
            assert 1 <= len(x) <= 3 and 1 <= len(y) <= 3 and int(target) == int(x) + int(y)
            keys.setdefault(split, set()).add((min(int(x), int(y)), max(int(x), int(y))))
    assert sum(len(k) for k in keys.values()) == sum(sizes)  # no pair twice, in either order
    assert max(len(s) for pairs in a.values() for s, _ in pairs) == 7  # "999+999"
    four = addition_pairs((50, 5, 5), digits=4, seed=0)
    assert max(len(s.split("+")[0]) for s, _ in four["train"]) == 4


def test_reverse_source_reverses_what_the_encoder_reads() -> None:
    data = ParallelData("tiny", {"train": [("535+61", "596")], "valid": [("1+2", "3")],
                                 "test": [("12+7", "19")]}, text=False)  # fmt: skip
    plain = Seq2SeqTask(data, Seq2SeqConfig(data="tiny"))
    rev = Seq2SeqTask(data, Seq2SeqConfig(data="tiny", reverse_source=True))
    decode = plain.source_vocab.decode
    assert "".join(decode(plain._source["train"][0])) == "535+61"
    assert "".join(rev.source_vocab.decode(rev._source["train"][0])) == "16+535"
    assert rev._target["train"] == plain._target["train"]  # the target is never reversed
    assert "".join(decode(rev.encode_source("51+3"))) == "3+15"


def test_reverse_pairs() -> None:
    splits = reverse_pairs((200, 20, 20), min_length=5, max_length=9, alphabet_size=4, seed=3)
    sources = [s for pairs in splits.values() for s, _ in pairs]
    assert len(set(sources)) == 240
    for s, t in splits["train"]:
        assert t == s[::-1] and 5 <= len(s) <= 9 and set(s) <= set("abcd")
    assert splits == reverse_pairs((200, 20, 20), min_length=5, max_length=9, alphabet_size=4,
                                   seed=3)  # fmt: skip


def test_a_tsv_file_splits_by_fractions_and_a_folder_by_files(tmp_path: Path) -> None:
    lines = [f"src {i}\ttgt {i}" for i in range(50)]
    (tmp_path / "all.tsv").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    data = load_parallel(str(tmp_path / "all.tsv"), valid_fraction=0.1, test_fraction=0.2)
    sizes = {s: len(p) for s, p in data.splits.items()}
    assert sizes == {"train": 35, "valid": 5, "test": 10} and data.text
    assert sorted(p for ps in data.splits.values() for p in ps) == sorted(
        (f"src {i}", f"tgt {i}") for i in range(50)
    )
    again = load_parallel(str(tmp_path / "all.tsv"), valid_fraction=0.1, test_fraction=0.2)
    assert again.splits == data.splits
    folder = tmp_path / "parallel"
    folder.mkdir()
    for split in ("train", "valid"):
        (folder / f"{split}.tsv").write_text("a b\tc\n", encoding="utf-8")
    with pytest.raises(DataError, match="test.tsv"):
        load_parallel(str(folder))
    (folder / "test.tsv").write_text("x\ty\r\n", encoding="utf-8")
    assert load_parallel(str(folder)).splits["test"] == [("x", "y")]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"1+1\t2\n2+2 4\n", ["bad.tsv", "line 2", "no tab"]),
        (b"1+1\t2\n\n \t5\n", ["bad.tsv", "line 3", "source", "empty"]),
        (b"1+1\t2\n2+\xff\t4\n", ["bad.tsv", "not UTF-8", "byte offset 8", "line 2"]),
        (b"", ["bad.tsv", "no source<TAB>target lines"]),
        (b"\n\n", ["bad.tsv", "no source<TAB>target lines"]),
    ],
)
def test_tsv_errors_name_the_file_and_place(tmp_path: Path, content: bytes, words: list) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_tsv(path)
    for word in words:
        assert word in str(info.value), info.value


# ---------------------------------------------------------------------------- the task


def test_the_teacher_forcing_schedule() -> None:
    data = load_parallel("addition", train_pairs=20, eval_pairs=5)
    config = Seq2SeqConfig(teacher_forcing=1.0, teacher_forcing_decay=0.3,
                           teacher_forcing_min=0.2)  # fmt: skip
    task = Seq2SeqTask(data, config)
    ratios = []
    for epoch in (1, 2, 3, 4, 10):
        task.start_epoch(epoch)
        ratios.append(task.ratio)
    assert ratios == pytest.approx([1.0, 0.7, 0.4, 0.2, 0.2])


def test_text_data_reports_bleu_of_the_greedy_outputs(tmp_path: Path) -> None:
    pytest.importorskip("sacrebleu")
    words = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]
    lines = [f"{a} {b} {c}\t{c} {b} {a}" for a in words for b in words[:4] for c in words[:3]]
    (tmp_path / "words.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = make_config(task="seq2seq", data=str(tmp_path / "words.tsv"), level="word",
                      hidden_size=8, embedding_size=6, epochs=1, batch_size=16,
                      out=str(tmp_path / "run"), progress=False, attention=True)  # fmt: skip
    trainer = Trainer(cfg, log=lambda _: None)
    result = trainer.fit()
    task, model = trainer.task, trainer.averaged
    test = task.data.splits["test"]
    outputs = task.translate(model, [s for s, _ in test], unknown="unk")
    import sacrebleu

    expected = sacrebleu.corpus_bleu(outputs, [[t for _, t in test]]).score
    assert result["test"]["bleu"] == pytest.approx(expected, abs=1e-9)
    assert {"exact_match", "token_accuracy", "nll"} <= set(result["test"])


# ---------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def addition_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("s2s") / "run"
    code = main([
        "train", "--task", "seq2seq", "--data", "addition", "--train-pairs", "400",
        "--eval-pairs", "40", "--hidden-size", "16", "--embedding-size", "8", "--epochs", "2",
        "--batch-size", "32", "--out", str(run), "--no-progress", "--threads", "1",
    ])  # fmt: skip
    assert code == 0
    return run


def test_train_then_eval_json(addition_run: Path, capsys: pytest.CaptureFixture) -> None:
    final = json.loads((addition_run / "final.json").read_text())
    assert final["monitor"] == "exact_match" and final["epochs"] == 2
    assert (addition_run / "test_outputs.tsv").read_text().startswith("source\ttarget\toutput\n")
    capsys.readouterr()
    assert main(["eval", str(addition_run), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["exact_match"] <= 1 and 0 <= result["token_accuracy"] <= 1
    assert result["token_accuracy"] == pytest.approx(final["test"]["token_accuracy"])
    assert result["count"] == 40 and "bleu" not in result  # synthetic data: no BLEU


def test_translate_prints_the_decoded_text(addition_run: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["translate", str(addition_run), "12+7"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.endswith("\n") and len(greedy.splitlines()) == 1
    assert set(greedy.strip()) <= set("0123456789")
    assert main(["translate", str(addition_run), "12+7", "--beam", "1"]) == 0
    assert capsys.readouterr().out == greedy
    assert main(["translate", str(addition_run), "12+7", "--beam", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["translate", str(addition_run), "12*7"]) == 2
    assert_one_line_error(capsys.readouterr().err, "translate", "'*'", "vocabulary")


def test_translate_data_writes_a_file_and_never_overwrites(
    addition_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sources = tmp_path / "sources.txt"
    sources.write_text("12+7\n\n5+5\t10\n", encoding="utf-8")
    assert main(["translate", str(addition_run), "--data", str(sources)]) == 0
    written = (addition_run / "translations.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in written] == ["12+7", "5+5"]
    assert "wrote 2 translations" in capsys.readouterr().out
    out = tmp_path / "mine.tsv"
    out.write_text("keep me\n")
    code = main(["translate", str(addition_run), "--data", str(sources), "--out", str(out)])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "translate", "already exists")
    assert out.read_text() == "keep me\n"
    assert main(["translate", str(addition_run)]) == 2
    assert_one_line_error(capsys.readouterr().err, "translate", "TEXT", "--data")
