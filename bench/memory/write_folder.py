"""A llama3-shaped bf16 HF folder with Llama 3's 128,256-token vocabulary (untied head, 2 layers, head_dim 16) and a
PEFT LoRA adapter for it beside it (q_proj, v_proj, down_proj; r 8; fp32), written with the standard library only.

usage: python3 write_folder.py HIDDEN OUT_DIR        (the adapter goes to OUT_DIR/../adapter)
Weights are finite bf16 values of magnitude 2^-9..2^-3 (random sign, exponent and mantissa), norms 1.0; the
adapter's A and B are finite fp32 values of magnitude 0.001..0.05. Used by peak_rss.sh (issue 12, item 4).
"""
import json, os, random, struct, sys

hidden = int(sys.argv[1]); out = sys.argv[2]
os.makedirs(out, exist_ok=True)
V = 128256; heads = hidden // 16; kv = max(1, heads // 4); inter = 2 * hidden
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
       "num_hidden_layers": 2, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": 16,
       "vocab_size": V, "max_position_embeddings": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
       "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
       "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16"}
json.dump(cfg, open(out + "/config.json", "w"))


def write_safetensors(path, shapes, dtype, esize, fill):
    names = sorted(shapes); header = {"__metadata__": {"format": "pt"}}; off = 0
    sizes = {}
    for n in names:
        count = 1
        for d in shapes[n]: count *= d
        sizes[n] = esize * count
        header[n] = {"dtype": dtype, "shape": shapes[n], "data_offsets": [off, off + sizes[n]]}; off += sizes[n]
    hb = json.dumps(header).encode(); hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb))); f.write(hb)
        for n in names: fill(f, n, sizes[n])


def repeat(f, pool, nbytes):
    while nbytes > 0:
        k = min(nbytes, len(pool)); f.write(pool[:k]); nbytes -= k


random.seed(1)
pool = bytearray()
for _ in range(1 << 19):
    pool += struct.pack("<H", (random.randint(0, 1) << 15) | (random.randint(118, 124) << 7) | random.randint(0, 127))
ones = struct.pack("<H", 0x3f80) * 4096

shapes = {"model.embed_tokens.weight": [V, hidden], "lm_head.weight": [V, hidden], "model.norm.weight": [hidden]}
for l in range(2):
    p = f"model.layers.{l}."
    shapes[p + "input_layernorm.weight"] = [hidden]; shapes[p + "post_attention_layernorm.weight"] = [hidden]
    shapes[p + "self_attn.q_proj.weight"] = [heads * 16, hidden]; shapes[p + "self_attn.k_proj.weight"] = [kv * 16, hidden]
    shapes[p + "self_attn.v_proj.weight"] = [kv * 16, hidden]; shapes[p + "self_attn.o_proj.weight"] = [hidden, heads * 16]
    shapes[p + "mlp.gate_proj.weight"] = [inter, hidden]; shapes[p + "mlp.up_proj.weight"] = [inter, hidden]
    shapes[p + "mlp.down_proj.weight"] = [hidden, inter]
write_safetensors(out + "/model.safetensors", shapes, "BF16", 2,
                  lambda f, n, nbytes: repeat(f, ones if n.endswith("norm.weight") else pool, nbytes))

adapter = os.path.join(os.path.dirname(os.path.abspath(out)), "adapter"); os.makedirs(adapter, exist_ok=True)
json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
           "target_modules": ["q_proj", "v_proj", "down_proj"]}, open(adapter + "/adapter_config.json", "w"))
fpool = bytearray()
for _ in range(1 << 14): fpool += struct.pack("<f", random.choice([-1, 1]) * random.uniform(0.001, 0.05))
adapter_shapes = {}
for l in range(2):
    for slot, o, i in [("self_attn.q_proj", heads * 16, hidden), ("self_attn.v_proj", kv * 16, hidden), ("mlp.down_proj", hidden, inter)]:
        k = f"base_model.model.model.layers.{l}.{slot}"
        adapter_shapes[k + ".lora_A.weight"] = [8, i]; adapter_shapes[k + ".lora_B.weight"] = [o, 8]
write_safetensors(adapter + "/adapter_model.safetensors", adapter_shapes, "F32", 4, lambda f, n, nbytes: repeat(f, fpool, nbytes))
