"""Analysis tools: complexity, speed, fusion time, input-gradient maps."""

from msfusion.analysis.complexity import count_macs, count_params
from msfusion.analysis.fusion_time import fusion_time
from msfusion.analysis.input_gradient import important_region_area, input_gradient_map

__all__ = ["count_macs", "count_params", "fusion_time", "important_region_area", "input_gradient_map"]
