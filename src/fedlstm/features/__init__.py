from fedlstm.features.preprocessor import FlowPreprocessor
from fedlstm.features.stats import PreprocessingStats, merge_all

__all__ = ["FlowPreprocessor", "PreprocessingStats", "merge_all"]
