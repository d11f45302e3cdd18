"""Training one model: `build.build_run` builds it in order, `engine.Run` fits and evaluates it;
beside them the checkpoint format, the standalone protocol's linear probe and the metrics."""
