// Calls the lsskernels ops from C++ through the dispatcher (what a libtorch
// user does) and checks them against brute force on a small random problem.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <cstdlib>
#include <set>
#include <tuple>

#define EXPECT(cond)                                              \
  do {                                                           \
    if (!(cond)) {                                               \
      std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                              \
    }                                                            \
  } while (0)

int main() {
  at::manual_seed(0);
  const int64_t N = 1000, d = 16, L = 4, K = 5, B = 3, M = 64;
  auto& dispatcher = c10::Dispatcher::singleton();
  auto hash = dispatcher.findSchemaOrThrow("lsskernels::hash_codes", "")
                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  auto build = dispatcher.findSchemaOrThrow("lsskernels::build_tables", "")
                   .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t)>();
  auto lookup = dispatcher.findSchemaOrThrow("lsskernels::bucket_lookup", "")
                    .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, int64_t, int64_t, int64_t)>();
  auto gathered = dispatcher.findSchemaOrThrow("lsskernels::gathered_logits", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                        const c10::optional<at::Tensor>&, const at::Tensor&)>();

  at::Tensor W = at::randn({N, d}), x = at::randn({B, d}), proj = at::randn({L, K, d});
  at::Tensor label_codes = hash.call(W, proj);
  auto [offsets, items] = build.call(label_codes, K);
  EXPECT(offsets.size(0) == L && offsets.size(1) == (1 << K) + 1 && items.size(1) == N);
  at::Tensor query_codes = hash.call(x, proj);
  auto [ids, counts] = lookup.call(query_codes, offsets, items, N, M, 1);

  // Brute force: the candidates of query b are the labels sharing a code with
  // it in at least one table.
  for (int64_t b = 0; b < B; ++b) {
    std::set<int64_t> want;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l)
        if (label_codes[n][l].item<int>() == query_codes[b][l].item<int>()) want.insert(n);
    const int64_t c = counts[b].item<int>();
    EXPECT(c == std::min<int64_t>(M, int64_t(want.size())));
    for (int64_t i = 0; i < c; ++i) EXPECT(want.count(ids[b][i].item<int>()) == 1);
    for (int64_t i = c; i < M; ++i) EXPECT(ids[b][i].item<int>() == -1);
  }

  at::Tensor logits = gathered.call(x, W, c10::nullopt, ids);
  at::Tensor safe = ids.clamp_min(0).to(at::kLong);
  at::Tensor want = at::bmm(W.index({safe}), x.unsqueeze(2)).squeeze(2);
  at::Tensor valid = ids >= 0;
  EXPECT(at::allclose(logits.masked_select(valid), want.masked_select(valid), 1e-5, 1e-5));
  EXPECT(at::isinf(logits.masked_select(~valid)).all().item<bool>());
  std::printf("lss_cpp_smoke: ok (%lld candidates for query 0)\n", (long long)counts[0].item<int>());
  return 0;
}
