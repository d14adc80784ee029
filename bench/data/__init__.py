"""The benchmarks' data: tasks and their builders, one concept per module.

* ``wordnet``: WordNet's data files and the bag-of-words task "guess the
  word from a text about it" (``make_wordnet_task``).
* ``text``: tokenizer, crude stemmer and tf-idf rows for bag-of-words tasks.
* ``metrics``: full dense inference's top-1 and P@1.
* ``minilm_senses``: WordNet senses embedded by all-MiniLM-L6-v2
  (``build_minilm_senses``; import it from its module: the encoder's
  packages load only when it embeds).
* ``dictd``: a reader of Debian's dictd databases (``/usr/share/dictd``).
* ``freedict``: FreeDict German-English, the two-tower "translation ->
  headword" task with held-out labels (``build_freedict_task``).
* ``gcide_lm``: a word-level language-model head on GCIDE's text
  (``build_gcide_lm_task``).

The library itself (``lsskernels.data``) keeps what a user imports: the
Extreme Classification Repository reader and the synthetic task.
"""

from .metrics import dense_precision_at_1, dense_top1, hits_at_1
from .text import crude_stem, tfidf_bag, tokens
from .wordnet import WORDNET_PARTS, Synset, make_wordnet_task, parse_wordnet_data, read_exceptions

__all__ = [
    "dense_precision_at_1",
    "dense_top1",
    "hits_at_1",
    "crude_stem",
    "tfidf_bag",
    "tokens",
    "WORDNET_PARTS",
    "Synset",
    "make_wordnet_task",
    "parse_wordnet_data",
    "read_exceptions",
]
