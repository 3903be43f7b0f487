"""Deployment: the same ServerApp and ClientApp as real processes (a SuperLink and SuperNodes).

- `credentials`: CA and TLS certificates, SuperNode keys, app signatures;
- `app`: the Flower app folder `flwr run` submits, and its signature;
- `frontdoor`: nginx in front of the SuperLink, passing only the Fleet API to the sites;
- `site`: what makes a site's SuperNode run only signed apps;
- `processes`: `LocalFederation`, the SuperLink, front door and SuperNodes as child processes;
- `launch`: a deployed run end to end, and the run directory the ServerApp writes.

Across real hosts the same pieces run by hand (`fedlstm deploy superlink` on the coordinator,
`fedlstm deploy supernode` at each site; see the README).
"""
