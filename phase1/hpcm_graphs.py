"""CUDA graphs for HPCM's coding passes.

At batch 1 the 11 context steps are hundreds of small kernels, so the GPU waits on kernel launches. A CUDA graph
replays a recorded sequence of kernels with one launch. The encoder is one graph (everything up to the symbols and
table indexes); the decoder is 12 graphs, split where the next symbols must come back from the CPU's rANS decoder.
The graphs replay the model's own eager functions (`_encode_eager`, `_decode_first/_step/_last`), so they compute
exactly what the eager code computes. Graphs are recorded per input size on first use.
"""

from __future__ import annotations

import torch


class _Graph:
    """`fn` recorded on `inputs`; calling it copies new values into those inputs (unless they are the very same
    tensors, as when a graph reads the previous graph's outputs) and replays. Outputs are overwritten by the next
    replay."""

    def __init__(self, fn, inputs):
        self.inputs = inputs
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # cuDNN/cuBLAS handles, lazy allocations and caches happen outside the graph
                fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*inputs)

    def __call__(self, *args):
        for dst, src in zip(self.inputs, args):
            if src is not dst:
                dst.copy_(src)
        self.graph.replay()
        return self.outputs


class HPCMGraphs:
    def __init__(self, model):
        self.model = model
        self._encoders: dict = {}
        self._decoders: dict = {}

    @torch.no_grad()
    def encode(self, x_pad):
        key = tuple(x_pad.shape)
        if key not in self._encoders:
            self._encoders[key] = _Graph(self.model._encode_eager, [x_pad.clone()])
        return self._encoders[key](x_pad)

    @torch.no_grad()
    def decode(self, z_q, read_y):
        key = tuple(z_q.shape)
        if key not in self._decoders:
            self._decoders[key] = self._record_decoder(z_q)
        first, steps, last = self._decoders[key]
        params, y_hat, ctx, means, idx = first(z_q)
        for step in steps:
            y_hat, ctx, means, idx = step(params, y_hat, ctx, means, read_y(idx))
        return last(y_hat, means, read_y(idx)).clone()

    def _record_decoder(self, z_q):
        m = self.model
        first = _Graph(m._decode_first, [torch.zeros_like(z_q)])
        params, y_hat, ctx, means, idx = first.outputs
        steps = []
        for k in range(1, 11):
            q = torch.zeros(idx.shape, dtype=torch.int32, device=idx.device)
            step = _Graph(lambda *a, k=k: m._decode_step(k, *a), [params, y_hat, ctx, means, q])
            steps.append(step)
            y_hat, ctx, means, idx = step.outputs
        q = torch.zeros(idx.shape, dtype=torch.int32, device=idx.device)
        last = _Graph(m._decode_last, [y_hat, means, q])
        return first, steps, last
