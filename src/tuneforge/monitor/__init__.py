"""The closed loop over serve's request log: drift and feedback (`tuneforge monitor`), retraining
on logged corrections with a gated, staged promotion (`tuneforge retrain`)."""
