"""The same federation without Flower's engine: every site a `ClientTask` in this process, FedAvg
(weighted by windows, as Flower's FedAvg) by hand. For reports that train many small federations
and for tests; the protocol (statistics, rounds, aggregate questions) is the one the ServerApp
runs, and so are the site and server objects."""

from __future__ import annotations

from fedlstm.federation.client import ClientTask
from fedlstm.federation.server import ServerTask


def run_inprocess(server: ServerTask, sites: list[ClientTask]) -> ServerTask:
    """Statistics, rounds of FedAvg with every site, then the detector (`server.result`)."""
    cfg = server.cfg
    fed = cfg.federation
    server.prepare_preprocessing(lambda question: [s.answer(question) for s in sites])
    preprocessor = server.preprocessor.to_dict() if server.preprocessor else None
    weights = server.initial_weights()
    server.on_global_model(0, weights)
    mu = fed.proximal_mu if fed.strategy == "fedprox" else 0.0
    for rnd in range(1, server.remaining_rounds + 1):
        done = rnd + server.round_offset
        results = []
        for site in sites:
            site.use_preprocessing(preprocessor)
            results.append(site.fit(weights, fed.local_epochs, mu, seed=cfg.seed * 100_003 + done,
                                    server_round=done))
        n = sum(k for _, k, _ in results)
        weights = [sum(w[i] * (k / n) for w, k, _ in results).astype(weights[i].dtype)
                   for i in range(len(weights))]
        server.record_fit(rnd, [(k, m) for _, k, m in results])
        server.on_global_model(rnd, weights)
        server.last_round = rnd
        if fed.evaluate_clients:
            server.record_evaluate(rnd, [(k, m) for _, k, m in (s.evaluate(weights) for s in sites)])
    server.result = server.detector(lambda question: [s.answer(question) for s in sites])
    return server
