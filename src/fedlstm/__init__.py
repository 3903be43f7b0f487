"""fedlstm: federated LSTM intrusion and anomaly detection."""

__version__ = "0.1.0"
