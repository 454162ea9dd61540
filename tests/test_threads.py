"""The fused kernels' thread policy (``grukit.fused.set_thread_policy``): the adaptive tuner's
choices on synthetic timings, bit-identical results under every policy, and a step that
finishes while other threads of the process keep the cores busy."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import grukit
import grukit.fused

needs_fused = pytest.mark.skipif(
    not grukit.fused.available(), reason=f"fused kernels: {grukit.fused.unavailable_reason()}"
)
pytestmark = needs_fused


@pytest.fixture
def adaptive():
    n = torch.get_num_threads()
    grukit.fused.set_thread_policy("adaptive")
    yield
    torch.set_num_threads(n)
    grukit.fused.set_thread_policy("adaptive")


def trace(one: list[float], every: list[float]) -> str:
    """The tuner's arms over calls costing one[i] on one thread and every[i] on all."""
    return "".join(str(a) for a in torch.ops.grukit.thread_tuner_trace(one, every))


def test_the_tuner_keeps_the_faster_choice_and_probes_the_other_rarely():
    arms = trace([1.0] * 600, [0.5] * 600)
    steady = arms[20:]
    assert steady.count("1") / len(steady) > 0.97, arms
    assert "0" in steady, "the slower choice is never re-timed"
    arms = trace([0.5] * 600, [1.0] * 600)
    assert arms[20:].count("0") / len(arms[20:]) > 0.97, arms


def test_the_tuner_stays_on_all_threads_unless_one_is_clearly_faster():
    """Noisy timings a few percent apart: no flapping between the two choices."""
    gen = torch.Generator().manual_seed(0)
    noise = (torch.rand(2, 600, generator=gen, dtype=torch.float64) * 0.2).tolist()
    arms = trace([0.97 + e for e in noise[0]], [1.0 + e for e in noise[1]])
    assert arms[20:].count("1") / len(arms[20:]) > 0.95, arms


def test_the_tuner_follows_a_change_of_load_within_a_few_calls():
    """All threads fast, then (a busy neighbour) 6x slower, then fast again."""
    one = [1.0] * 1300
    every = [0.5] * 300 + [3.0] * 300 + [0.5] * 700
    arms = trace(one, every)
    assert arms[303:600].count("0") / 297 > 0.95, arms[300:600]
    # back on all threads after at most one probe interval (256 calls) once the load is gone,
    # re-probing one thread less and less often
    assert arms[600 + 260 :].count("1") / len(arms[860:]) > 0.9, arms[600:]
    assert arms[1100:].count("1") / len(arms[1100:]) > 0.97, arms[1100:]


def test_the_tuner_warms_up_on_both_choices_before_it_picks():
    arms = trace([1.0] * 8, [0.5] * 8)
    assert arms[:6].count("0") == 3 and arms[:6].count("1") == 3, arms


def test_policy_names_are_checked():
    with pytest.raises(ValueError, match="thread policy must be one of"):
        grukit.fused.set_thread_policy("fast")


def _step(m: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    m.zero_grad()
    out, h = m(x)
    (out.square().sum() + h.sum()).backward()
    return [out.detach(), h.detach(), *(p.grad.clone() for p in m.parameters())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_policy_gives_bit_identical_results(adaptive, dtype):
    """The adaptive policy runs calls on one thread and on two; every call's results equal
    those of the "one" and "all" policies bit for bit (small steps: the backward overlap path;
    a batch of 40: the row-block path)."""
    torch.set_num_threads(2)
    for N, T, H in ((3, 60, 24), (40, 12, 48)):
        torch.manual_seed(0)
        m = grukit.GRU(5, H, num_layers=2, bidirectional=True, dtype=dtype, backend="fused")
        x = torch.randn(T, N, 5, dtype=dtype)
        expected = {}
        for policy in ("one", "all"):
            grukit.fused.set_thread_policy(policy)
            expected[policy] = _step(m, x)
        for a, b in zip(expected["one"], expected["all"], strict=True):
            assert torch.equal(a, b)
        grukit.fused.set_thread_policy("adaptive")
        for _ in range(12):
            for a, b in zip(_step(m, x), expected["one"], strict=True):
                assert torch.equal(a, b)
        info = grukit.fused.info()
        assert info["thread_policy"] == "adaptive"
        assert info["calls_on_one_thread"] > 0 and info["calls_on_all_threads"] > 0, info
        assert info["kinds"] and all(k["calls"] > 0 for k in info["kinds"]), info


def test_a_single_thread_has_nothing_to_choose(adaptive):
    torch.set_num_threads(1)
    m = grukit.GRU(4, 8, backend="fused")
    for _ in range(3):
        _step(m, torch.randn(5, 2, 4))
    info = grukit.fused.info()
    assert info["calls_on_one_thread"] == info["calls_on_all_threads"] == 0, info


@pytest.mark.parametrize("layer_norm", [False, True])
def test_the_overlap_gives_the_same_bits_whichever_thread_runs_dx(adaptive, layer_norm):
    """In the backward's overlap a chunk's dx products run on the recursion thread when it waits
    for a buffer, else on the gradient thread: a wide input and a narrow state make the gradient
    thread the slower one, so both happen over repeated calls, and every call equals the
    one-thread result bit for bit."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    m = grukit.GRU(96, 16, backend="fused", layer_norm=layer_norm)
    x = torch.randn(120, 2, 96, requires_grad=True)

    def step() -> list[torch.Tensor]:
        m.zero_grad()
        x.grad = None
        out, h = m(x)
        (out * torch.linspace(-1, 1, 16)).sum().backward()
        return [out.detach(), x.grad.clone(), *(p.grad.clone() for p in m.parameters())]

    grukit.fused.set_thread_policy("one")
    want = step()
    grukit.fused.set_thread_policy("all")
    for _ in range(15):
        for a, b in zip(step(), want, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_small_steps_take_the_overlap_on_two_threads_only(adaptive, layer_norm):
    """Steps too small to split (few rows, narrow state) run the two-thread overlap in both
    directions of the pass, and give the one-thread bits; on one thread they do not."""
    torch.manual_seed(1)
    m = grukit.GRU(24, 16, backend="fused", layer_norm=layer_norm)
    x = torch.randn(90, 3, 24, requires_grad=True)

    def step() -> tuple[list[torch.Tensor], dict[str, int]]:
        before = grukit.fused.info()["overlapped_calls"]
        m.zero_grad()
        x.grad = None
        out, h = m(x)
        (out * torch.linspace(-1, 1, 16)).sum().backward()
        after = grukit.fused.info()["overlapped_calls"]
        grads = [out.detach(), h.detach(), x.grad.clone()]
        ran = {k: after[k] - before[k] for k in after}
        return grads + [p.grad.clone() for p in m.parameters()], ran

    torch.set_num_threads(1)
    want, ran = step()
    assert ran == {"forward": 0, "backward": 0}
    torch.set_num_threads(2)
    grukit.fused.set_thread_policy("all")
    got, ran = step()
    assert ran == {"forward": 1, "backward": 1}
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():  # inference too
        before = grukit.fused.info()["overlapped_calls"]["forward"]
        assert torch.equal(m(x)[0], want[0])
        assert grukit.fused.info()["overlapped_calls"]["forward"] == before + 1


BUSY_SCRIPT = textwrap.dedent(
    """
    import threading, time, torch, grukit, grukit.fused
    torch.set_num_threads(2)
    stop = threading.Event()
    def spin():  # torch ops release the GIL: these threads keep the cores busy
        a = torch.randn(256, 256)
        while not stop.is_set():
            a @ a
    busy = [threading.Thread(target=spin, daemon=True) for _ in range(2)]
    for policy in ("all", "adaptive"):
        grukit.fused.set_thread_policy(policy)
        torch.manual_seed(0)
        m = grukit.GRU(8, 32, backend="fused")
        x = torch.randn(200, 2, 8)  # small steps: the backward's two-thread overlap
        out, h = m(x); out.sum().backward()
        want = [p.grad.clone() for p in m.parameters()]
        if not busy[0].is_alive():
            for t in busy: t.start()
        for _ in range(20):
            m.zero_grad(); out, h = m(x); out.sum().backward()
            assert all(torch.equal(p.grad, w) for p, w in zip(m.parameters(), want))
    stop.set()
    for t in busy:
        t.join()
    print("finished")
    """
)


def test_a_step_finishes_while_other_threads_of_the_process_are_busy():
    """Two threads of the process keep both cores busy with matrix products while the kernel
    runs its two-thread paths: every step finishes (bounded by a timeout, so a deadlock or a
    livelock fails instead of hanging) and gives the quiet run's gradients."""
    proc = subprocess.run(
        [sys.executable, "-c", BUSY_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr[-2000:]
