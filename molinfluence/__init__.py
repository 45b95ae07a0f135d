"""MolInfluence: influence-function data selection for MoLFormer regression.

Modules (imports only point down):

- ``molformer``, ``tokenizer``: the native MoLFormer encoder and its SMILES tokenizer.
- ``encoder``: the starting encoder: the published MoLFormer-XL, or a random one with a tokenizer built from the data.
- ``batch``: one split as tensors (``Batch``: ids, mask, labels, weights; moves itself to a device) and its encoding.
- ``regressor``: encoder + regression head, self-describing save/load, and the loader of the base model and its splits.
- ``training``: the one training function (``fit``: epochs with early stopping, or a fixed number of steps).
- ``influence``: LiSSA/CG/exact inverse-HVPs and scores.
- ``validation``: does the score predict the measured effect of adding a sample (a package of its stages).
- ``runs``: one training run from files to outputs; a grid condition's seeds in one process, with a per-seed cache.
- ``grid``: the grid condition type (init, strategy, k, seed), its paths, and the strategy lists (standard library only).
- ``data``, ``selection``, ``metrics``, ``plots``, ``files``: stand-alone helpers.
"""

__version__ = "0.1.0"
