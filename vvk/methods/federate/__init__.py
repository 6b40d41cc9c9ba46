"""Federated methods: the framework-free core of DualAdapt (federated multi-target domain
adaptation; Yao et al., WACV 2022) in ``vvk.methods.federate.dualadapt``: the model, the client
and server steps, FedAvg, the feature statistics that clients send, and an in-process round loop.
The Flower apps (``vvk.federated``, per DESIGN.md) are meant to call the same pieces; nothing in
this package imports Flower."""
