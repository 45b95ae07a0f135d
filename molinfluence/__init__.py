"""MolInfluence: influence-function data selection for MoLFormer regression.

Modules (imports only point down):

- ``molformer``, ``tokenizer``: the native MoLFormer encoder and its SMILES tokenizer.
- ``encoder``: the starting encoder: the published MoLFormer-XL, or a random one with a tokenizer built from the data.
- ``regressor``: encoder + regression head, self-describing save/load.
- ``training``, ``influence``: fine-tuning with early stopping; LiSSA/CG/exact inverse-HVPs and scores.
- ``runs``: one training run from files to outputs; a grid condition's seeds in one process, with a per-seed cache.
- ``grid``: the grid condition type (init, strategy, k, seed), its paths, and the strategy lists (standard library only).
- ``data``, ``selection``, ``metrics``, ``plots``, ``files``: stand-alone helpers.
"""

__version__ = "0.1.0"
