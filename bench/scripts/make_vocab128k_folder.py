#!/usr/bin/env python3
# Writes a tiny-body Llama 3 folder with the real 128,256-token vocabulary (hidden 256, 2 layers, bf16 weights, untied
# head; pass "tied" as the 2nd argument to tie it) for the loading-memory figure in docs/benchmarks.md. Standard library only.
# usage: python3 bench/scripts/make_vocab128k_folder.py OUT_DIR [tied] && cp ../shared/data/llama3_tokenizer/tokenizer*.json OUT_DIR/
import json, struct, random, os, sys, array
out=sys.argv[1]; tied = len(sys.argv)>2 and sys.argv[2]=='tied'
os.makedirs(out, exist_ok=True)
V,D,L,H,KV,I=128256,256,2,4,2,512
hd=D//H
cfg={"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":V,"hidden_size":D,"intermediate_size":I,
 "num_hidden_layers":L,"num_attention_heads":H,"num_key_value_heads":KV,"head_dim":hd,"max_position_embeddings":256,
 "rms_norm_eps":1e-5,"rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192},
 "tie_word_embeddings":tied,"bos_token_id":128000,"eos_token_id":[128001,128008,128009],"torch_dtype":"bfloat16","hidden_act":"silu","attention_bias":False,"mlp_bias":False}
json.dump(cfg,open(os.path.join(out,"config.json"),"w"),indent=1)
shapes=[("model.embed_tokens.weight",[V,D]),("model.norm.weight",[D])]
if not tied: shapes.append(("lm_head.weight",[V,D]))
for l in range(L):
    p=f"model.layers.{l}."
    shapes+= [(p+"self_attn.q_proj.weight",[H*hd,D]),(p+"self_attn.k_proj.weight",[KV*hd,D]),(p+"self_attn.v_proj.weight",[KV*hd,D]),(p+"self_attn.o_proj.weight",[D,H*hd]),
      (p+"mlp.gate_proj.weight",[I,D]),(p+"mlp.up_proj.weight",[I,D]),(p+"mlp.down_proj.weight",[D,I]),(p+"input_layernorm.weight",[D]),(p+"post_attention_layernorm.weight",[D])]
shapes.sort()
rng=random.Random(0)
# a pool of bf16 values ~N(0,0.02), repeated (fast)
pool=array.array('H')
for _ in range(65536):
    f=rng.gauss(0,0.02); pool.append(struct.unpack('<I',struct.pack('<f',f))[0]>>16)
one=struct.unpack('<I',struct.pack('<f',1.0))[0]>>16
hdr={}; off=0; blobs=[]
for n,s in shapes:
    cnt=1
    for x in s: cnt*=x
    if n.endswith("norm.weight"): a=array.array('H',[one])*cnt
    else:
        reps=cnt//len(pool)+1; a=(pool*reps)[:cnt]
    b=a.tobytes(); hdr[n]={"dtype":"BF16","shape":s,"data_offsets":[off,off+len(b)]}; off+=len(b); blobs.append(b)
hdr["__metadata__"]={"format":"pt"}
h=json.dumps(hdr).encode(); h+=b' '*((8-len(h)%8)%8)
with open(os.path.join(out,"model.safetensors"),"wb") as f:
    f.write(struct.pack('<Q',len(h))); f.write(h)
    for b in blobs: f.write(b)
