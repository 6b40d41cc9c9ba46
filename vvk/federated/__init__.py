"""DualAdapt on Flower: the same rounds as ``vvk.methods.federate.rounds.run_rounds``, with the
server and each client apart, talking through Flower 1.42's Message API (``flwr[simulation]``,
the ``federate`` extra). One round's code is shared, not copied: the ClientApp runs
``rounds.client_work`` and the ServerApp ``rounds.server_round``, as the in-process loop does.

- ``wire``: models, tasks and client updates as Flower records, and the server's checks of a
  reply (anything malformed drops its client for the round; nothing a client sends ends the run);
- ``client``: the ``ClientApp`` (train and query handlers) and where a node's data comes from;
- ``server``: the ``ServerApp`` (the round loop in ``@app.main()``: why not a ``Strategy``, there);
- ``checkpoints``: the run folder, a checkpoint after every round, resuming;
- ``simulation``: ``simulate``, a whole run on this machine through Flower's Ray simulation;
- ``deploy``: ``write_app``, the app folder that ``flwr run`` submits to a SuperLink.

Entry points::

    simulate(method, source, targets, *, rounds, clients_per_round, clients_per_target=1, seed=0,
             preset="digits", out=None, on_round=None, eval_targets=None, num_cpus=None,
             reply_timeout=1800.0, mods=()) -> list[RoundRecord]
    server_app   # vvk.federated.server:server_app, its run from the run config (RUN_CONFIG_DEFAULTS)
    client_app   # vvk.federated.client:client_app, its data from the node config (NodeDomains)
    write_app(folder, run_config=None) -> Path
    serve(grid, plan_run(...), on_round=None)   # the loop itself, on any Flower Grid

Deployment. ``vvk federate server`` and ``vvk federate client`` (``launch``) run the steps
below for the user, start and stop every process, and turn failures into exit codes::

    vvk federate server --source mnist --targets usps --clients-per-target 3 --rounds 10 \
        --address 0.0.0.0:9091 --out /runs/usps --insecure
    vvk federate client --data usps --part 0 --server SERVER:9091 --insecure     # one per client

What they run (Flower 1.42's console scripts ``flower-superlink``, ``flower-supernode``,
``flwr``; every machine needs vvk and ``flwr`` installed: the app bundle carries only a
pyproject.toml):

1. On the server machine, the SuperLink. It runs the ServerApp, so the run folder (``out``) and
   the source domain are read and written there::

       flower-superlink --insecure --disable-runtime-dependency-installation \\
           --host 0.0.0.0 --port 9091

2. Where each client's data is, one SuperNode per client; its node config names the data
   (``target``: a ``vvk.data.domains.load_domain`` spec; ``part``: which of the run's
   ``clients-per-target`` parts of it; or ``partition-id=I``, the I-th client of the run's
   ``targets``; optional ``data-path``, ``size``, ``device``). SuperNodes on one machine need
   distinct ``--port`` values (their local runtime API)::

       flower-supernode --insecure --superlink SERVER:9091 --port 9094 \\
           --node-config 'target="usps" part=0'

3. From any machine that reaches the SuperLink: the app folder, the connection, the run::

       python -c 'from vvk.federated.deploy import write_app; write_app("vvk-federate",
           {"source": "mnist", "targets": "usps", "clients-per-target": 3,
            "clients-per-round": 3, "rounds": 10, "out": "/runs/usps"})'
       # in $FLWR_HOME/config.toml (default ~/.flwr/config.toml):
       #   [superlink.vvk]
       #   address = "SERVER:9091"
       #   insecure = true
       flwr run vvk-federate vvk --stream      # --run-config 'rounds=20' overrides a key

   ``--stream`` follows the run's log (vvk logs each round and each dropped client); without
   it ``flwr run`` returns once the run is submitted. Running it again with the same ``out``
   resumes after the last checkpointed round. The server waits ``node-timeout`` seconds for
   every client's SuperNode, and each round ``reply-timeout`` seconds for replies; a client
   that has not answered by then is dropped for the round. ``--insecure`` turns TLS off:
   for a real network, give the SuperLink ``--ssl-certfile``/``--ssl-keyfile`` and the
   SuperNodes ``--root-certificates`` instead.

A SuperNode starts one ClientApp process per message, so a deployed client reads its data again
each round (the decoded-images cache of folder domains makes that cheap); a simulation's Ray
actors load it once (tests/federated/test_deploy.py runs the whole deployment on 127.0.0.1).
"""

import importlib.util

from vvk.errors import VvkError

if importlib.util.find_spec("flwr") is None:
    raise VvkError("vvk.federated needs Flower, which is not installed", hint="pip install 'vvk[federate]'")

from vvk.federated.client import NodeDomains, SavedClients, client_app, make_client_app  # noqa: E402
from vvk.federated.deploy import write_app  # noqa: E402
from vvk.federated.server import (  # noqa: E402
    RUN_CONFIG_DEFAULTS,
    ServerPlan,
    make_server_app,
    plan_from_run_config,
    plan_run,
    serve,
    server_app,
)
from vvk.federated.simulation import simulate  # noqa: E402
from vvk.federated.wire import BadReply  # noqa: E402

__all__ = [
    "RUN_CONFIG_DEFAULTS",
    "BadReply",
    "NodeDomains",
    "SavedClients",
    "ServerPlan",
    "client_app",
    "make_client_app",
    "make_server_app",
    "plan_from_run_config",
    "plan_run",
    "serve",
    "server_app",
    "simulate",
    "write_app",
]
