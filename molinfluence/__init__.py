"""MolInfluence: influence-function data selection for MoLFormer regression.

Modules (imports only point down):

- ``molformer``, ``tokenizer``: the native MoLFormer encoder and its SMILES tokenizer.
- ``encoder``: the starting encoder: the published MoLFormer-XL, or a random one with a tokenizer built from the data.
- ``regressor``: encoder + regression head, self-describing save/load.
- ``training``, ``influence``: fine-tuning with early stopping; LiSSA/CG/exact inverse-HVPs and scores.
- ``data``, ``selection``, ``metrics``, ``plots``, ``files``: stand-alone helpers.
"""

__version__ = "0.1.0"
