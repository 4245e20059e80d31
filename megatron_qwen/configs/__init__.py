"""The Hydra config tree shipped with the package (groups: model, parallel, data, stage, optim, logging, cluster, experiment)."""
