"""The character language model: vocabulary, text reading, the stream layout of truncated BPTT,
the carried state (through batches, checkpoints and resume), generation and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import assert_one_line_error

from grukit.cli import main
from grukit.data.download import OTHER_DATASETS, sha256_file
from grukit.errors import DataError
from grukit.models import LanguageModel
from grukit.runconfig import ModelConfig
from grukit.tasks.charlm.data import TextData, read_text, split_text, streams
from grukit.tasks.charlm.task import CharLMConfig, CharLMTask
from grukit.train import Trainer, load_run, make_config
from grukit.variants import ALL_VARIANTS
from grukit.vocab import Vocabulary, detokenize, tokenize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = SHARED / "text" / "tinyshakespeare.txt"

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 12


def quiet(*_: Any) -> None:
    pass


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "citizens.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def task_of(text: str = TEXT, **options: Any) -> CharLMTask:
    config = CharLMConfig(data="inline", **options)
    data = TextData.build("inline", text, config.level, config.valid_fraction, config.test_fraction)
    return CharLMTask(data, config)


def config(data: Path, out: Path, **values: Any) -> Any:
    base = dict(task="charlm", data=str(data), hidden_size=12, embedding_size=6, bptt=8,
                batch_size=4, epochs=2, steps_per_epoch=5, out=str(out), progress=False,
                sample_length=20)  # fmt: skip
    base.update(values)
    return make_config(**base)


# ---------------------------------------------------------------------------- vocabulary


def test_a_character_vocabulary_round_trips() -> None:
    vocab = Vocabulary.build(tokenize("hello, wörld", "char"), specials=("<unk>",))
    assert vocab.tokens[0] == "<unk>" and vocab.id("<unk>") == 0
    assert list(vocab.tokens[1:]) == sorted(set("hello, wörld"))
    ids = vocab.encode(tokenize("world", "char"), unknown="unk")
    assert detokenize(vocab.decode(ids), "char") == "world"
    assert Vocabulary.from_state(json.loads(json.dumps(vocab.state()))) == vocab
    assert vocab.encode("xy", unknown="unk") == [0, 0]
    with pytest.raises(DataError, match="outside the vocabulary.*'x'"):
        vocab.encode("xy", what="prime string")


def test_specials_have_fixed_ids_and_bytes_cover_everything() -> None:
    vocab = Vocabulary.build("abc", specials=("<eos>", "<pad>", "<bos>"))
    assert [vocab.id(s) for s in ("<pad>", "<bos>", "<eos>")] == [0, 1, 2]
    with pytest.raises(KeyError):
        vocab.id("<unk>")
    raw = "naïve ☃".encode()
    byte_vocab = Vocabulary.of_bytes()
    assert len(byte_vocab) == 256 and byte_vocab.unknown(tokenize(raw, "byte")) == []
    assert detokenize(byte_vocab.decode(byte_vocab.encode(tokenize(raw, "byte"))), "byte") == (
        "naïve ☃"
    )
    with pytest.raises(DataError, match="reserved"):
        Vocabulary(["<pad>", "a"], specials=("<pad>",))
    with pytest.raises(DataError, match="not a vocabulary"):
        Vocabulary.from_state({"specials": [], "tokens": [None]})


# ---------------------------------------------------------------------------- text and layout


def test_reading_refuses_empty_and_non_utf8_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_text(empty)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(DataError, match=r"0xe9 at byte offset 3.*--level byte"):
        read_text(bad)
    assert read_text(bad, "byte") == b"caf\xe9 au lait"
    with pytest.raises(DataError, match="no such file"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="not a regular file"):
        read_text(tmp_path)


def test_splits_are_contiguous_as_in_nanogpt() -> None:
    tokens = list(range(1000))
    parts = split_text(tokens, 0.1, 0.0)
    assert parts["train"] == tokens[:900] and parts["valid"] == tokens[900:]
    assert list(parts["test"]) == []
    parts = split_text(tokens, 0.05, 0.05)
    assert parts["train"] + parts["valid"] + parts["test"] == tokens
    assert len(parts["train"]) == 900 and len(parts["valid"]) == 50


def test_unknown_characters_of_valid_map_to_unk_and_are_counted() -> None:
    task = task_of("abababababababababab" * 5 + "zz", valid_fraction=0.1, test_fraction=0.0)
    assert "z" not in task.vocab
    assert task.data.unknown == {"train": 0, "valid": 2, "test": 0}
    assert "2 unknown" in task.describe()
    assert task.data.ids["valid"].tolist()[-2:] == [0, 0]


def test_streams_lay_a_split_out_contiguously() -> None:
    ids = torch.arange(23)
    x, y = streams(ids, 4, offset=2)  # m = (23 - 1 - 2) // 4 = 5
    assert x.shape == (5, 4)
    assert x[:, 1].tolist() == [7, 8, 9, 10, 11]
    assert torch.equal(y, x + 1)
    with pytest.raises(DataError, match="lower --batch-size"):
        streams(torch.arange(3), 4)


def test_training_chunks_walk_the_streams_and_wrap_with_a_new_offset() -> None:
    task = task_of(bptt=7, steps_per_epoch=3)
    g = torch.Generator().manual_seed(0)
    m = (task.data.ids["train"].numel() - 1) // 4
    seen = []
    for _ in range(math.ceil(m / 7) // 3 + 2):
        seen += [(b.reset, b.inputs.shape[0]) for b in task.batches("train", 4, shuffle=True,
                                                                    generator=g)]  # fmt: skip
    assert len(seen) % 3 == 0 and seen[0][0]
    first_pass = math.ceil(m / 7)
    assert [r for r, _ in seen[:first_pass]] == [True] + [False] * (first_pass - 1)
    assert seen[first_pass][0], "a new pass starts from a zero state"
    assert task._pass >= 1 and 0 <= task._offset < 7


# ---------------------------------------------------------------------------- carried state


def test_the_carried_state_continues_the_sequence_exactly() -> None:
    """Two chunks with the state carried give the losses of one forward over both."""
    torch.manual_seed(0)
    task = task_of(bptt=6, steps_per_epoch=2)
    model = task.build_model(ModelConfig(hidden_size=10, backend="reference"), None).double()
    model.train()
    chunks = list(task.batches("train", 3, shuffle=True, generator=torch.Generator()))
    losses = [task.loss(model, b)[0].detach() for b in chunks]
    whole = torch.cat([b.inputs for b in chunks])
    targets = torch.cat([b.targets for b in chunks])
    with torch.no_grad():
        logits, _ = model(whole)
        logits2, _ = model(chunks[1].inputs)
    expect = torch.nn.functional.cross_entropy(
        logits[6:].reshape(-1, logits.shape[-1]), targets[6:].reshape(-1), reduction="sum"
    )
    torch.testing.assert_close(losses[1], expect, rtol=1e-10, atol=1e-10)
    # resetting the state instead would change the loss
    reset = torch.nn.functional.cross_entropy(
        logits2.reshape(-1, logits2.shape[-1]), targets[6:].reshape(-1), reduction="sum"
    )
    assert abs(float(reset) - float(expect)) > 1e-3


def test_the_carried_state_is_detached() -> None:
    task = task_of(bptt=5, steps_per_epoch=3)
    model = task.build_model(ModelConfig(hidden_size=8), None).train()
    for batch in task.batches("train", 2, shuffle=True, generator=torch.Generator()):
        loss, _ = task.loss(model, batch)
        loss.backward()  # would fail on the second chunk if the graph reached back
        assert task._carry.grad_fn is None and not task._carry.requires_grad


def test_an_lstm_carries_both_of_its_states(text_file: Path, tmp_path: Path) -> None:
    Trainer(config(text_file, tmp_path / "run", variant="lstm", epochs=1), log=quiet).fit()
    config_, task, model = load_run(tmp_path / "run", which="last")
    assert model.rnn.variant == "lstm"


def test_resume_mid_pass_is_exact_including_the_carried_state(
    text_file: Path, tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    Trainer(config(text_file, straight, epochs=3), log=quiet).fit()
    resumed = tmp_path / "resumed"
    Trainer(config(text_file, resumed, epochs=1), log=quiet).fit()
    progress = json.loads((resumed / "checkpoints" / "last" / "progress.json").read_text())
    assert progress  # the position and the carried state are in the checkpoint
    Trainer.resume(resumed, overrides={"epochs": 3}, log=quiet).fit()

    def numbers(run: Path) -> list[dict[str, Any]]:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        drop = ("seconds", "char_per_s", "elapsed_s")
        return [{k: v for k, v in r.items() if k not in drop} for r in rows]

    assert numbers(resumed) == numbers(straight)
    a = json.loads((resumed / "final.json").read_text())
    b = json.loads((straight / "final.json").read_text())
    assert a["valid"] == b["valid"] and a["test"] == b["test"]


def test_resuming_without_the_carried_state_would_differ(text_file: Path, tmp_path: Path) -> None:
    """The resume test above can fail: dropping the carried state changes the next epoch."""
    run = tmp_path / "run"
    trainer = Trainer(config(text_file, run, epochs=1), log=quiet)
    trainer.fit()
    kept = Trainer.resume(run, overrides={"epochs": 2}, log=quiet)
    dropped = Trainer.resume(run, overrides={"epochs": 2}, log=quiet)
    dropped.task._carry = None
    assert kept.task._carry is not None
    a = kept.train_epoch(2)["train_loss"]
    b = dropped.train_epoch(2)["train_loss"]
    assert a != b


def test_one_task_serves_several_runs_as_fresh_ones(text_file: Path, tmp_path: Path) -> None:
    """compare and tune reuse one loaded task: a second run (other width, same seed) neither
    inherits the first one's carried state nor its place in the text."""
    first = Trainer(config(text_file, tmp_path / "a", epochs=1), log=quiet)
    first.fit()
    assert first.task._carry is not None and first.task._position > 0
    reused = Trainer(config(text_file, tmp_path / "b", hidden_size=20), task=first.task, log=quiet)
    fresh = Trainer(config(text_file, tmp_path / "c", hidden_size=20), log=quiet)
    assert reused.fit()["valid"] == fresh.fit()["valid"]


# ---------------------------------------------------------------------------- generation


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_stepping_gives_the_logits_of_the_whole_sequence(variant: str) -> None:
    torch.manual_seed(1)
    model = LanguageModel(11, 5, ModelConfig(variant=variant, hidden_size=7, num_layers=2))
    model = model.double().eval()
    ids = torch.randint(11, (9, 3))
    with torch.no_grad():
        whole, _ = model(ids)
        state, steps = None, []
        for t in range(ids.shape[0]):
            logits, state = model.step(ids[t], state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps), whole, rtol=1e-10, atol=1e-10)


def test_sampling_is_seeded_and_honours_top_k() -> None:
    torch.manual_seed(0)
    task = task_of()
    model = task.build_model(ModelConfig(hidden_size=8), None)
    a = task.generate(model, 60, prime="First", seed=3)
    assert a == task.generate(model, 60, prime="First", seed=3)
    assert a != task.generate(model, 60, prime="First", seed=4)
    assert len(a) == 60
    pieces: list[str] = []
    top1 = task.generate(model, 30, prime="All", top_k=1, seed=0, on_text=pieces.append)
    assert top1 == task.generate(model, 30, prime="All", top_k=1, seed=99), "top-1 is greedy"
    assert "".join(pieces) == top1
    with pytest.raises(DataError, match="prime string.*'Z'"):
        task.generate(model, 5, prime="Zebra")


# ---------------------------------------------------------------------------- command line


def test_cli_train_eval_and_sample(text_file: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    status = main(["train", "--task", "charlm", "--data", str(text_file), "--hidden-size", "16",
                   "--embedding-size", "8", "--bptt", "16", "--batch-size", "4", "--epochs", "2",
                   "--out", str(run), "--no-progress"])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "nats_per_char:" in out and "bits_per_char:" in out
    assert (run / "samples" / "sample-seed0.txt").read_text(encoding="utf-8")
    assert main(["eval", str(run), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bits_per_char"] == pytest.approx(result["nats_per_char"] / math.log(2))
    assert result["chars"] > 0

    assert main(["sample", str(run), "--prime", "First", "--length", "40", "--seed", "2",
                 "--temperature", "0.8", "--top-k", "5"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert out.startswith("First") and len(out.rstrip("\n")) >= 45
    assert "characters/s" not in out and "/s)" in err
    assert main(["sample", str(run), "--prime", "First", "--length", "40", "--seed", "2",
                 "--temperature", "0.8", "--top-k", "5"]) == 0  # fmt: skip
    assert capsys.readouterr().out == out, "a seeded sample is reproducible"

    assert main(["sample", str(run), "--prime", "Q~", "--length", "5"]) == 2
    assert_one_line_error(capsys.readouterr().err, "sample", "outside the vocabulary", "'~'")


def test_a_run_without_a_test_split_says_so(text_file: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    Trainer(config(text_file, run, epochs=1, test_fraction=0.0, valid_fraction=0.1),
            log=quiet).fit()  # fmt: skip
    assert "test" not in json.loads((run / "final.json").read_text())
    assert main(["eval", str(run), "--split", "test"]) == 2
    assert_one_line_error(capsys.readouterr().err, "eval", "no test split", "test_fraction")


def test_byte_level_models_any_file(tmp_path: Path, capsys) -> None:
    data = tmp_path / "mixed.bin"
    data.write_bytes(b"caf\xe9 \x00\x01 " * 200)
    run = tmp_path / "run"
    assert main(["train", "--task", "charlm", "--data", str(data), "--hidden-size", "8",
                 "--bptt", "8", "--batch-size", "4", "--epochs", "1", "--out", str(run),
                 "--no-progress"]) == 2  # fmt: skip
    assert_one_line_error(capsys.readouterr().err, "train", "byte offset 3", "--level byte")
    assert not run.exists()
    assert main(["train", "--task", "charlm", "--data", str(data), "--level", "byte",
                 "--hidden-size", "8", "--bptt", "8", "--batch-size", "4", "--epochs", "1",
                 "--out", str(run), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    _, task, _ = load_run(run)
    assert len(task.vocab) == 256


def test_eval_context_resets_the_state_every_n_characters() -> None:
    task = task_of(eval_context=5, valid_fraction=0.4)
    batches = list(task.batches("valid", 64))
    assert all(b.inputs.shape[0] <= 5 for b in batches) and len(batches) > 2
    assert all(b.reset for b in batches if b.inputs.shape[0] == 5)
    model = task.build_model(ModelConfig(hidden_size=8), None).eval()
    carried = task_of(valid_fraction=0.4)
    with torch.no_grad():
        windowed = sum(float(task.loss(model, b)[0]) for b in batches)
        whole = sum(float(carried.loss(model, b)[0]) for b in carried.batches("valid", 64))
    assert windowed != whole


# ---------------------------------------------------------------------------- Tiny Shakespeare


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/text is absent")
def test_tiny_shakespeare_is_the_registered_text_and_splits_as_nanogpt() -> None:
    assert sha256_file(SHAKESPEARE) == OTHER_DATASETS["tinyshakespeare"].sha256
    text = read_text(SHAKESPEARE)
    assert len(text) == 1_115_394 and len(set(text)) == 65
    data = TextData.build("tinyshakespeare", text, "char", 0.1, 0.0)
    assert data.ids["train"].numel() == 1_003_854  # nanoGPT's int(n * 0.9)
    assert data.ids["valid"].numel() == 111_540
    assert len(data.vocab) == 66  # 65 characters, all in the train part, and <unk>
    assert data.unknown["valid"] == 0
