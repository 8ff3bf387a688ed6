"""The leaf every layer stands on: the op contract and the layer-op schema.

- :mod:`.contract`: Config, MaskMode, NormMode, RecurrentBN, RecurrentLN, Zoneout, the
  Backend protocol and the indexing of the semantics;
- :mod:`.schema`: the layer-op schema every op family shares (argument order, encodings,
  its flattener and its autograd formula);
- :mod:`.arch`: a CUDA device's compute capability ("sm_90");
- :mod:`.trace`: the mark that makes a function a constant under torch.compile, set without
  importing Dynamo;
- :mod:`.digest`: the fingerprint of a backend's kernel sources (what a GPU validation
  vouches for).

It imports nothing of fusedrnn: ops (the decisions) and backends (the kernels) both import
it, and neither imports the other's internals.
"""
