/* kvforge info --model DIR [--json] */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model/checkpoint.h"
#include "model/hf_config.h"

static const char *attn_name(const kvf_model_config *c) {
    static char buf[96];
    if (c->attn == KVF_ATTN_MLA)
        snprintf(buf, sizeof buf, "MLA (latent %d + RoPE key %d%s)", c->kv_lora_rank, c->qk_rope_head_dim,
                 c->q_lora_rank ? ", low-rank q" : "");
    else if (c->attn == KVF_ATTN_MLA_PARTIAL_ROPE)
        snprintf(buf, sizeof buf, "MLA, partial RoPE (latent %d + %d RoPE dims per KV head)", c->kv_lora_rank,
                 c->partial_rope_dim);
    else if (c->n_kv_heads == c->n_q_heads)
        snprintf(buf, sizeof buf, "%s (%d heads)", c->n_q_heads < c->n_heads ? "SQA" : "MHA", c->n_q_heads);
    else if (c->n_kv_heads == 1)
        snprintf(buf, sizeof buf, "MQA (%d query heads, 1 KV head)", c->n_q_heads);
    else
        snprintf(buf, sizeof buf, "%s (%d query heads, %d KV heads)", c->n_q_heads < c->n_heads ? "SQA" : "GQA",
                 c->n_q_heads, c->n_kv_heads);
    return buf;
}

int kvf_cmd_info(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"json", no_argument, 0, 'j'},
                                         {"seq-len", required_argument, 0, 'w'},
                                         {0, 0, 0, 0}};
    const char *dir = NULL;
    bool json = false;
    long long T = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'm') dir = optarg;
        else if (c == 'j') json = true;
        else if (c == 'w') T = atoll(optarg);
        else return kvf_cli_fail(KVF_EXIT_USAGE, "info: see kvforge info --help");
    }
    if (!dir || optind != argc) return kvf_cli_fail(KVF_EXIT_USAGE, "info: --model DIR is required");
    kvf_model_config cfg;
    char arch[64];
    if (kvf_hf_config_read(dir, &cfg, arch, sizeof arch) != KVF_OK) return kvf_cli_fail_lib("info");
    if (kvf_model_config_resolve(&cfg) != KVF_OK) return kvf_cli_fail_lib("info");
    if (T <= 0) T = cfg.max_seq_len;
    int producers = 0;
    for (int l = 0; l < cfg.n_layers; l++) producers += kvf_model_is_producer(&cfg, l);
    long long params = (long long)kvf_model_n_params(&cfg), kv = (long long)kvf_model_kv_bytes_per_token(&cfg);
    double flops = kvf_model_flops_per_token(&cfg, T);
    if (json) {
        printf("{\"architecture\": \"%s\", \"params\": %lld, \"flops_per_token\": %.0f, "
               "\"kv_bytes_per_token\": %lld, \"layers\": %d, \"kv_layers\": %d, \"d_model\": %lld, "
               "\"vocab_size\": %lld, \"context\": %lld}\n",
               arch, params, flops, kv, cfg.n_layers, producers, (long long)cfg.d_model,
               (long long)cfg.vocab_size, T);
        return KVF_EXIT_OK;
    }
    printf("architecture      %s\n", arch);
    printf("attention         %s\n", attn_name(&cfg));
    printf("layers            %d (%d produce K/V)\n", cfg.n_layers, producers);
    printf("d_model           %lld, vocab %lld, context %lld\n", (long long)cfg.d_model,
           (long long)cfg.vocab_size, (long long)cfg.max_seq_len);
    printf("parameters        %lld\n", params);
    printf("FLOPs per token   %.4g (forward, context %lld; training ≈ 3×)\n", flops, T);
    printf("KV cache          %lld bytes per token (bf16, all layers)\n", kv);
    return KVF_EXIT_OK;
}
