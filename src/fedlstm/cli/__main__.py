from fedlstm.cli.main import app

app()
