/* fuzz_hf_config.c — Hugging Face config.json parsing (model/hf_config.c) on arbitrary text.
 * An accepted config must round-trip: its dump is accepted again, as the same architecture, with
 * every field the design uses unchanged, and a second write -> read changes nothing at all.
 * (Fields the design does not use — MLA ranks under standard attention, RoPE settings under
 * learned positions, … — are "not considered and not written" (hf_config.h), so the first
 * write may drop them: a file with model_type "kvforge", standard attention and a
 * kv_lora_rank reads back with kv_lora_rank 0 once it is written as LlamaForCausalLM.) */
#include "fuzz_common.h"

#include "model/hf_config.h"

#define NAME "fuzz/config.json"

/* c with the fields its design does not use set to zero. */
static kvf_model_config used_fields(const kvf_model_config *c) {
    kvf_model_config u = *c;
    if (u.attn == KVF_ATTN_STANDARD) u.kv_lora_rank = 0;
    if (u.attn != KVF_ATTN_MLA) {
        u.q_lora_rank = u.qk_nope_head_dim = u.qk_rope_head_dim = 0;
        u.mla_kv_norm = false;
    } else {
        u.head_dim = u.rope_dim = 0; /* MLA's q/k dims are qk_nope + qk_rope */
    }
    if (u.attn != KVF_ATTN_MLA_PARTIAL_ROPE) u.partial_rope_dim = 0;
    if (u.pos != KVF_POS_ROPE) {
        u.rope_theta = 0;
        u.rope_dim = 0;
        u.rope_layout = (kvf_rope_layout)0;
    }
    if (u.mlp != KVF_MLP_GELU) u.gelu_exact = false;
    return u;
}

static void round_trip(const kvf_model_config *cfg, kvf_model_config *back, const char *what) {
    char *dump = kvf_hf_config_dump(cfg, KVF_DTYPE_BF16);
    FUZZ_REQUIRE(dump != NULL, "%s: an accepted config cannot be written", what);
    kvf_hf_arch arch2;
    kvf_status st = kvf_hf_config_parse(dump, "fuzz/dump.json", back, &arch2);
    FUZZ_REQUIRE(st == KVF_OK, "%s: the written config is not accepted back:\n%s", what, dump);
    FUZZ_REQUIRE(arch2 == kvf_hf_config_arch(cfg), "%s: written as %s, read back as %s", what,
                 kvf_hf_arch_name(kvf_hf_config_arch(cfg)), kvf_hf_arch_name(arch2));
    kvf_model_config a = used_fields(cfg), b = used_fields(back);
    char why[256] = "";
    FUZZ_REQUIRE(kvf_hf_config_equal(&a, &b, why, sizeof why),
                 "%s: read -> write -> read changes a field the design uses: %s\n%s", what, why,
                 dump);
    FUZZ_REQUIRE(kvf_model_n_params(cfg) == kvf_model_n_params(back), "%s: parameter count",
                 what);
    free(dump);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvf_error_clear();
    char *json = fuzz_strdup(data, size);
    kvf_model_config cfg;
    kvf_hf_arch arch = KVF_HF_ARCH_COUNT;
    kvf_status st = kvf_hf_config_parse(json, NAME, &cfg, &arch);
    free(json);
    if (st != KVF_OK) {
        fuzz_check_error(st, NAME);
        kvf_error_clear();
        return 0;
    }
    fuzz_check_ok("kvf_hf_config_parse");
    FUZZ_REQUIRE(arch < KVF_HF_ARCH_COUNT, "no architecture reported");
    (void)kvf_hf_arch_name(arch);
    (void)kvf_hf_config_arch(&cfg);
    (void)kvf_model_n_params(&cfg);
    kvf_model_config once, twice;
    round_trip(&cfg, &once, "first");
    round_trip(&once, &twice, "second");
    char why[256] = "";
    FUZZ_REQUIRE(kvf_hf_config_equal(&once, &twice, why, sizeof why),
                 "a written config is not a fixed point of write -> read: %s", why);
    return 0;
}
