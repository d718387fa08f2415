"""The registered scorer as code. MLflow's models-from-code ships this file with every logged version and runs it
on load; it names the predictor to serve, so loading a version executes reviewed source, never a pickle.

`tasks.scorer_package.log_score_model` logs it; the `tasks` package ships beside it (code_paths), so a version loads
with the code it was logged with.
"""

from mlflow.models import set_model

from tasks.scorer_package import ScorePredictor

set_model(ScorePredictor())
