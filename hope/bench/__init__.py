"""`hope bench`: the paper's synthetic capability suites, every model trained and tested side by side.

* `formal.py`: the six formal languages of Irie et al. 2023 as accept / reject classification, tested
  on the training lengths ("bin 0") and on longer strings ("bin 1") (SPEC 7).
* `mad.py`: the MAD tasks of Poli et al. 2024 (recall, fuzzy and noisy recall, selective copying,
  compression, memorization) at CPU-sized lengths (SPEC 7).
* `niah.py`: synthetic pass-key and multi-key retrieval trained at one length, tested at 1x-8x.
* `common.py`: what they share: bench-sized models with matched parameter counts, the training and
  test loop, and the report (`results.json`, `results.md`, `results.png`).

Run: `hope bench formal|mad|niah [--quick] [--models ...] [--out DIR]`; docs/benchmarks.md says what
each task measures and lists the paper's numbers.
"""

SUITES = ("formal", "mad", "niah")
