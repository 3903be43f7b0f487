"""Which normal-traffic model the hybrid uses, decided on validation data only: the Gaussian
over the hybrid LSTM's hidden state (its novelty part) against the landed LSTM autoencoder's
reconstruction errors, both scored by Mahalanobis distance. Prints the ROC-AUC of each score at
separating normal from attack validation windows (no test set is scored), with dataset defaults.

    .venv/bin/python benchmarks/novelty_model.py nsl-kdd      # also kdd99, unsw-nb15

Measured (seed 0): NSL-KDD 0.9941 vs 0.9943, KDD99 0.9980 vs 0.9918, UNSW-NB15 0.8935 vs
0.8856; the hidden state is as good or better and needs no second network.
"""
import json
import sys
import time

from fedlstm.config import load_config
from fedlstm.data.splits import build_split
from fedlstm.tasks import task_for
from fedlstm.tasks.anomaly import anomaly_config
from fedlstm.tasks.centralised import train

ds = sys.argv[1]
prot = "random-split" if ds == "unsw-nb15" else "official"
hyb = load_config(None, ["detector=hybrid"], data__dataset=ds, data__protocol=prot)
split = build_split(hyb.data, seed=0)
t = time.time()
h = train(task_for(hyb), split)
hv = h.evaluations["val"]["parts"]["anomaly"]["roc_auc"]
ht = time.time() - t
ae = anomaly_config(None, [], data__dataset=ds, data__protocol=prot)
t = time.time()
a = train(task_for(ae), split)
av = a.evaluations["val"]["binary"]["roc_auc"]
print(json.dumps({"dataset": ds, "hidden_state_val_auc": round(hv, 4), "hybrid_seconds": round(ht),
                  "autoencoder_val_auc": round(av, 4), "autoencoder_seconds": round(time.time() - t)}))
