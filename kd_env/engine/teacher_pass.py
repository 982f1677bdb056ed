"""Former name of :mod:`kd_env.engine.teacher_source` (#26), kept while code in progress imports it."""

from kd_env.engine.teacher_source import feature_map_shapes, gather_teacher_outputs, open_teacher_store, run_teachers

__all__ = ["feature_map_shapes", "gather_teacher_outputs", "open_teacher_store", "run_teachers"]
