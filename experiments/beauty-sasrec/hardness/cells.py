"""Table cells from `gnno audit negatives --json --model M` (stdin) for run.sh:
`shards` gives the J share > 0, J p99 and the test-item share; `model` the shares
of random and hard negatives the model scores above the target."""
import json
import sys

e = json.load(sys.stdin)["epochs"][0]
if sys.argv[1] == "shards":
    q = e["overlap_quantiles"]
    print(f"{e['share_overlap_positive']:.3f} | {q[5]:.3f} | {e['share_test_item']:.5f}")
else:
    m = e["model"]
    print(f"{m['random_above_target']:.4f} / {m['hard_above_target']:.4f}")
