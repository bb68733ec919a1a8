"""The contrastive loss under 2 CPU processes (gloo) equals the single-process loss on the global batch,
and the gathered embeddings carry gradient back to the process that made them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from polyfuse.objectives.contrastive import gather_with_grad, info_nce, local_rows

WORLD = 2
ROWS = 5  # per process; rank 1 has one row fewer, so padding is exercised


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    za = F.normalize(torch.randn(2 * ROWS - 1, 8, generator=g), dim=-1)
    zb = F.normalize(torch.randn(2 * ROWS - 1, 8, generator=g), dim=-1)
    present = torch.ones(2 * ROWS - 1, dtype=torch.bool)
    present[3] = False
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    return za, zb, present, labels


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        za, zb, present, labels = _data()
        mine = slice(0, ROWS) if rank == 0 else slice(ROWS, 2 * ROWS - 1)
        local_a = za[mine].clone().requires_grad_(True)
        local_b = zb[mine].clone().requires_grad_(True)
        gathered_a, gathered_b = gather_with_grad(local_a), gather_with_grad(local_b)
        loss = info_nce(
            gathered_a,
            gathered_b,
            gather_with_grad(present[mine]),
            torch.tensor(3.0),
            labels=gather_with_grad(labels[mine]),
            local=local_rows(local_a.shape[0], local_a.device),
        )
        loss.backward()
        assert local_a.grad is not None and local_b.grad is not None
        torch.save({"loss": loss.detach(), "ga": local_a.grad, "gb": local_b.grad}, f"{out}/rank{rank}.pt")
        # without a final barrier one rank can tear gloo down while the other still finishes the backward
        # collective, which aborts it ("terminate called without an active exception"; seen in CI)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_process_loss_and_gradients_match_one_process(tmp_path: Path) -> None:
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    za, zb, present, labels = _data()
    za.requires_grad_(True)
    zb.requires_grad_(True)
    # one process scoring every row: each process's loss is the mean over its own valid rows, so the
    # global loss is their mean weighted by valid rows (rank 0 has 4 valid rows, rank 1 has 4)
    full = info_nce(za, zb, present, torch.tensor(3.0), labels=labels)
    full.backward()
    mean_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2
    torch.testing.assert_close(mean_loss, full.detach())
    # DDP averages gradients over processes: each process's gradient / W is the full-batch gradient
    grads_a = torch.cat([ranks[0]["ga"], ranks[1]["ga"]]) / WORLD
    grads_b = torch.cat([ranks[0]["gb"], ranks[1]["gb"]]) / WORLD
    assert za.grad is not None and zb.grad is not None
    torch.testing.assert_close(grads_a, za.grad)
    torch.testing.assert_close(grads_b, zb.grad)
    assert torch.count_nonzero(za.grad[ROWS:]) > 0  # rank 1's rows were trained by rank 0's queries too
