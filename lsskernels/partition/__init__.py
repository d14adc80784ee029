"""The partition family ("partitions", the default index of LSSLinear), one
concept per module, dependencies one way: fit -> index -> parts -> ops.

* codec.py: the int8 codec (Int8Codec, INT8): encoding label rows, the
  scan ops over the codes, bytes per code row;
* probe.py: the centroids and the probe (probe_codes, PartitionProbe);
* lists.py: the inverted lists, their one writer (PartitionLists) and their
  validation (validate_partition_lists);
* index.py: PartitionIndex, composing probe, lists and codec with the search
  settings (nprobe, rerank); PartitionConfig (its knobs, LSSLinear(index=...));
  default_partitions, default_nprobe;
* calibration.py: held-out strata, the paired loss and its bound, the cost
  model, the choice of a setting;
* kmeans.py: k-means on a seeded sample and the exact nearest-centroid
  assignment;
* fit.py: the builds, spill and the calibration stages; it builds an index
  through the index's public methods and registers the family.

Importing this package registers the "partitions" family
(lsskernels.families).
"""
from .codec import INT8, Int8Codec
from .fit import PartitionFitConfig, PartitionFitReport
from .index import SPACES, PartitionConfig, PartitionIndex, default_nprobe, default_partitions
from .lists import PartitionLists, validate_partition_lists
from .probe import PartitionProbe, probe_codes

__all__ = ["INT8", "Int8Codec", "PartitionFitConfig", "PartitionFitReport", "SPACES", "PartitionConfig", "PartitionIndex",
           "default_nprobe", "default_partitions", "PartitionLists", "validate_partition_lists", "PartitionProbe",
           "probe_codes"]
