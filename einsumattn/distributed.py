"""Context parallelism on torch.distributed: a module compiled with `merge=True` run with
its sequence sharded over a process group (docs/merge.md, "Context parallelism").

    import torch.distributed as dist
    from einsumattn.distributed import context_parallel, shard

    module = einsumattn.compile("causal_softmax.attn", merge=True)
    # each process: its shards of the sequence (shard() cuts a whole tensor the same way)
    out = context_parallel(module, Q_local, K_local, V_local, strategy="ring",
                           layout="balanced")

Each process holds a shard of the streamed rank (the keys: K, V) and of the ranks whose
positions meet it (the queries: Q; `module.MERGE["offsets"]`), the same length on every
process. Inputs over neither are the same everywhere. The output is this process's shard
of the outputs.

- layout "contiguous": process r holds positions r*n .. (r+1)*n - 1 of each sharded rank.
- layout "balanced": the sequence is cut into 2W chunks and process r holds chunks r and
  2W-1-r (one early, one late), so that under a causal mask every process has the same
  work (the zig-zag of ring attention implementations).

Masks and score functions see global positions: each chunk runs `module.partial` with its
first position (`m_start`, and `p_start` for the queries). States are combined with
`module.merge` and turned into outputs by `module.finish`, the proved pieces of
transform/merge.py.

- strategy "ring": the key shards travel around the ring, one step per process
  (W-1 sends of a shard each: (W-1)/W of K and V per process); each process merges the
  states of the shards as they arrive (in any order: the merge is proved commutative;
  where it is not, the states are kept and merged in order of position).
- strategy "allgather": every process gathers every key shard at once (one collective)
  and merges in order of position.

Both are differentiable: the ring's exchange is an autograd Function whose backward
sends each received shard's gradient back to its sender along the reverse ring, and the
all-gather's is torch.distributed.nn's. Transport is torch.distributed only (gloo on the
CPU, NCCL on GPUs).

Linear recurrences (outputs indexed by the streamed rank: `MERGE["kind"] == "prefix"`,
transform/prefix.py) run as LASP-2: each process computes its state from a zero start,
one all-gather exchanges the states (one per process), each merges the states before
its own and computes its outputs from that entering state. The contiguous layout only:
a position's output reads every position before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

STRATEGIES = ("ring", "allgather")
LAYOUTS = ("contiguous", "balanced")


@dataclass
class Traffic:
    """What one call sent from this process: bytes (key shards or states) and the
    exchanges that carried them (ring steps, collectives)."""

    bytes_sent: int = 0
    messages: int = 0


# ------------------------------------------------------------------ layouts
def chunk_starts(length: int, world: int, index: int, layout: str) -> list[tuple[int, int]]:
    """(first global position, length) of each chunk process `index` holds of a rank of
    `length` positions, in the order its local tensor holds them."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "contiguous":
        if length % world:
            raise ValueError(f"a length of {length} does not split into {world} equal "
                             f"shards")
        size = length // world
        return [(index * size, size)]
    if length % (2 * world):
        raise ValueError(f"the balanced layout cuts the sequence into 2 x {world} equal "
                         f"chunks: {length} positions do not")
    size = length // (2 * world)
    return [(index * size, size), ((2 * world - 1 - index) * size, size)]


def shard(tensor: torch.Tensor, axis: int, world: int, index: int,
          layout: str = "contiguous") -> torch.Tensor:
    """Process `index`'s shard of a whole tensor along `axis` (its chunks, concatenated
    in the layout's order)."""
    chunks = chunk_starts(tensor.shape[axis], world, index, layout)
    return torch.cat([tensor.narrow(axis, start, size) for start, size in chunks], dim=axis)


# ------------------------------------------------------------------ the exchange
def _peer(group, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def _exchange(tensors, send_to: int, receive_from: int, group) -> list[torch.Tensor]:
    """Send `tensors` to one process and receive the same shapes from another, at once."""
    received = [torch.empty_like(t) for t in tensors]
    operations = []
    for tensor, buffer in zip(tensors, received):
        operations.append(dist.P2POp(dist.isend, tensor.contiguous(), _peer(group, send_to),
                                     group))
        operations.append(dist.P2POp(dist.irecv, buffer, _peer(group, receive_from), group))
    for request in dist.batch_isend_irecv(operations):
        request.wait()
    return received


class _RingPass(torch.autograd.Function):
    """One step of the ring: send to the next process, receive from the previous. The
    gradient of what was received goes back to its sender; the gradient of what was
    sent comes from the process it went to."""

    @staticmethod
    def forward(ctx, group, send_to, receive_from, *tensors):
        ctx.group, ctx.send_to, ctx.receive_from = group, send_to, receive_from
        return tuple(_exchange([t.detach() for t in tensors], send_to, receive_from, group))

    @staticmethod
    def backward(ctx, *gradients):
        # Every process's graph has the same shape, so the same inputs need gradients
        # everywhere and the exchanges pair up.
        wanted = [n for n, need in enumerate(ctx.needs_input_grad[3:]) if need]
        back = _exchange([gradients[n] if gradients[n] is not None else
                          torch.zeros(()) for n in wanted],
                         ctx.receive_from, ctx.send_to, ctx.group)
        result: list = [None] * len(gradients)
        for n, value in zip(wanted, back):
            result[n] = value
        return (None, None, None, *result)


class _Anchor(torch.autograd.Function):
    """`value`, with `others` in its graph: they get zero gradients, so that the
    collective that made them runs its backward on every process."""

    @staticmethod
    def forward(ctx, value, *others):
        ctx.shapes = [(o.shape, o.dtype, o.device) for o in others]
        return value.view_as(value)

    @staticmethod
    def backward(ctx, gradient):
        return (gradient, *(torch.zeros(shape, dtype=dtype, device=device)
                            for shape, dtype, device in ctx.shapes))


def _all_gather(tensors: dict, group) -> dict[str, list[torch.Tensor]]:
    """Every process's value of each tensor, name -> [one per process]: one collective
    per dtype (the tensors flattened into one buffer), differentiable where they need
    gradients. One collective, not one per tensor: a collective's backward must run in
    the same order on every process, and the autograd engine orders independent nodes
    by when they become ready, which differs from process to process."""
    world = dist.get_world_size(group)
    gathered: dict[str, list] = {name: [None] * world for name in tensors}
    groups: dict = {}
    for name, value in tensors.items():
        groups.setdefault(value.dtype, []).append(name)
    for names in groups.values():
        flat = torch.cat([tensors[n].contiguous().reshape(-1) for n in names])
        if flat.requires_grad:
            import torch.distributed.nn.functional as collectives

            every = list(collectives.all_gather(flat, group=group))
        else:
            every = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(every, flat, group=group)
        for process, buffer in enumerate(every):
            offset = 0
            for name in names:
                size = tensors[name].numel()
                gathered[name][process] = buffer[offset:offset + size].view(
                    tensors[name].shape)
                offset += size
    return gathered


# ------------------------------------------------------------------ the call
def context_parallel(module, *inputs, group=None, strategy: str = "ring",
                     layout: str = "contiguous", queries: str | None = None,
                     traffic: Traffic | None = None, **params):
    """This process's shard of the outputs of `module` (compiled with merge=True) on the
    sequence sharded over `group` (the default group if None). `inputs`: the spec's
    inputs in order, each this process's shard (see the module docstring); `params`: the
    spec's params; `traffic`: filled with what this process sent.

    `queries`: the rank of the queries, sharded like the keys (self-attention). By
    default the rank whose positions meet the keys' (`p` in a causal mask); a spec
    whose scores ignore positions (sigmoid attention) names it (`queries="P"`), or
    gives "" for queries every process holds whole (decoding, cross-attention): the
    outputs are then whole on every process, and gradients flowing into the key shards
    add up over the processes."""
    info = getattr(module, "MERGE", "missing")
    if info == "missing":
        raise ValueError("the module has no partial states: compile it with merge=True "
                         "(einsumattn compile --merge)")
    if info is None:
        raise ValueError("the module's spec has no merge of partial states (see the "
                         "comment above MERGE in the module, or einsumattn analyze)")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    traffic = traffic if traffic is not None else Traffic()
    if info["kind"] == "prefix":
        return _prefix_parallel(module, inputs, group, layout, traffic, params)
    world, me = dist.get_world_size(group), dist.get_rank(group)
    names = list(module.INPUTS)
    if queries is None:
        if len(info["offsets"]) != 1:
            raise ValueError("name the rank of the queries: context_parallel(..., "
                             "queries='P'), or queries='' for queries every process "
                             "holds whole")
        queries = next(iter(info["offsets"]))
    axes = _sharded_axes(module, names, {info["rank"], *([queries] if queries else [])})
    keys = {name: axis for name, (rank, axis) in axes.items() if rank == info["rank"]}
    if not keys:
        raise ValueError(f"no input is indexed by {info['rank']}")
    key_length = inputs[names.index(next(iter(keys)))].shape[next(iter(keys.values()))]
    total = key_length * world
    key_chunks = chunk_starts(total, world, me, layout)
    others = {rank for rank, _ in axes.values() if rank != info["rank"]}
    query_chunks = {}
    for rank in others:
        name = next(n for n, (r, _) in axes.items() if r == rank)
        length = inputs[names.index(name)].shape[axes[name][1]] * world
        query_chunks[rank] = chunk_starts(length, world, me, layout)

    local = dict(zip(names, inputs))
    held = {name: local[name] for name in keys}          # the key shard in hand
    owner = me
    states: dict[int, list] = {}      # per query chunk: [(key start, state)] or merged

    def absorb(shard_inputs: dict, owner: int) -> None:
        owned = chunk_starts(total, world, owner, layout)
        for chunk, (start, _) in enumerate(owned):
            for q, _ in enumerate(next(iter(query_chunks.values())) if query_chunks
                                  else [None]):
                arguments = []
                keywords = {info["start"]: start, info["count"]: total}
                for name in names:
                    value = shard_inputs[name] if name in keys else local[name]
                    if name in keys:
                        value = _chunk(value, keys[name], owned, chunk)
                    elif name in axes:
                        rank, axis = axes[name]
                        value = _chunk(value, axis, query_chunks[rank], q)
                    arguments.append(value)
                for rank, param in info["offsets"].items():
                    if rank in query_chunks:
                        keywords[param] = query_chunks[rank][q][0]
                state = module.partial(*arguments, **keywords, **params)
                if info["commutative"]:
                    states[q] = state if q not in states else module.merge(states[q], state)
                else:
                    states.setdefault(q, []).append((start, state))

    if strategy == "allgather":
        gathered = _all_gather(held, group)
        for other in range(world):
            traffic.bytes_sent += _bytes(held.values()) if other != me else 0
            absorb({name: gathered[name][other] for name in held}, other)
        traffic.messages += int(world > 1)
    else:
        for step in range(world):
            absorb(held, owner)
            if step == world - 1:
                break
            sent = list(held.values())
            traffic.bytes_sent += _bytes(sent)
            traffic.messages += 1
            received = _RingPass.apply(group, (me + 1) % world, (me - 1) % world, *sent)
            held = dict(zip(held, received))
            owner = (owner - 1) % world

    outputs = []
    for q in sorted(states):
        state = states[q]
        if not info["commutative"]:
            ordered = [s for _, s in sorted(state, key=lambda item: item[0])]
            state = ordered[0]
            for other in ordered[1:]:
                state = module.merge(state, other)
        arguments = []
        for name in info["finish_inputs"]:
            value = local[name]
            if name in axes:
                rank, axis = axes[name]
                value = _chunk(value, axis, query_chunks[rank], q)
            arguments.append(value)
        keywords = {name: total for name in info["finish_keywords"]}
        for rank, param in info["offsets"].items():
            if param in info["finish_offsets"] and rank in query_chunks:
                keywords[param] = query_chunks[rank][q][0]
        result = module.finish(state, *arguments, **keywords, **params)
        outputs.append(result if isinstance(result, tuple) else (result,))
    dtype = _output_dtype(inputs)
    joined = []
    for n, output in enumerate(module.OUTPUTS):
        axis = _output_axis(module, output, others)
        pieces = [values[n] for values in outputs]
        joined.append((torch.cat(pieces, dim=axis) if axis is not None else pieces[0])
                      .to(dtype))
    return joined[0] if len(joined) == 1 else tuple(joined)


def _prefix_parallel(module, inputs, group, layout: str, traffic: Traffic, params: dict):
    """LASP-2: each process's state from a zero start, one all-gather of the states, the
    prefix of those before it merged, and its outputs from that entering state."""
    info = module.MERGE
    if layout != "contiguous":
        raise ValueError("a prefix combine needs the contiguous layout: the outputs at a "
                         "position read the state of every position before it")
    world, me = dist.get_world_size(group), dist.get_rank(group)
    rank = info["rank"]
    axes = _sharded_axes(module, list(module.INPUTS), {rank})
    holder = next(iter(axes))
    length = inputs[list(module.INPUTS).index(holder)].shape[axes[holder][1]]
    keywords = {info["start"]: me * length, info["count"]: length * world}
    state = module.partial(*inputs, **keywords, **params)
    gathered = _all_gather(state, group)
    if world > 1:
        traffic.bytes_sent += _bytes(state.values())
        traffic.messages += 1
    entering = {name: torch.zeros_like(value) for name, value in state.items()}
    for other in range(me):
        earlier = {name: gathered[name][other] for name in state}
        entering = earlier if other == 0 else module.merge(entering, earlier)
    # The all-gather's backward is a collective: every process must run it, also those
    # that read none of the gathered states (the first) or not all of them.
    entering = {name: _Anchor.apply(value, *gathered[name])
                for name, value in entering.items()}
    result = module.finish(entering, *inputs, **{k: v for k, v in keywords.items()
                                                 if k in info["finish_keywords"]}, **params)
    dtype = _output_dtype(inputs)
    if isinstance(result, tuple):
        return tuple(value.to(dtype) for value in result)
    return result.to(dtype)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _output_dtype(inputs) -> torch.dtype:
    """The outputs' dtype, as the module's forward: the first floating input's."""
    return next((t.dtype for t in inputs if t.is_floating_point()), torch.float32)


def _chunk(value: torch.Tensor, axis: int, chunks: list, number: int) -> torch.Tensor:
    """Chunk `number` of a local tensor that holds `chunks` one after another."""
    return value.narrow(axis, sum(size for _, size in chunks[:number]), chunks[number][1])


def _sharded_axes(module, names: list[str], sharded: set[str]) \
        -> dict[str, tuple[str, int]]:
    """input -> (the sharded rank it is indexed by, its axis): the streamed rank, or the
    queries'. An input indexed by both is refused."""
    ranks = module.MERGE["input_ranks"]
    found = {}
    for name in names:
        hits = [(rank, axis) for axis, rank in enumerate(ranks[name]) if rank in sharded]
        if len(hits) > 1:
            raise ValueError(f"input {name} is indexed by {hits[0][0]} and {hits[1][0]}: "
                             f"sharding both is not supported")
        if hits:
            found[name] = hits[0]
    return found


def _output_axis(module, output: str, sharded: set[str]) -> int | None:
    ranks = module.MERGE["output_ranks"][output]
    return next((axis for axis, rank in enumerate(ranks) if rank in sharded), None)


__all__ = ["context_parallel", "shard", "chunk_starts", "Traffic", "STRATEGIES", "LAYOUTS"]
