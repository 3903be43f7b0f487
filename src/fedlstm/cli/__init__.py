"""The `fedlstm` command: a thin layer over the library, rendering with rich.

`main` holds the app and the training commands; `detect` (detect, serve, schema), `anomaly`,
`deploy` and `keys` hold command groups; `common` what they share."""
