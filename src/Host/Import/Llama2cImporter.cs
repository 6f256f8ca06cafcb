using System.Buffers.Binary;
using Peft.Host.Formats;
using Peft.Host.Model;
using Peft.Host.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Peft.Host.Import;

/// <summary>
/// Converts a llama2.c checkpoint (the legacy "version 0" <c>.bin</c> that <c>run.c</c> reads) into an HF folder.
/// File layout, all little-endian: a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
/// vocab_size, seq_len; a negative vocab_size means the classifier is not shared with the embedding), then
/// float32 arrays: token_embedding (vocab, dim), rms_att (L, dim), wq (L, dim, dim), wk (L, kv_dim, dim),
/// wv (L, kv_dim, dim), wo (L, dim, dim), rms_ffn (L, dim), w1 (L, hidden, dim), w2 (L, dim, hidden),
/// w3 (L, hidden, dim), rms_final (dim), freq_cis_real and freq_cis_imag (seq_len, head_size/2 each, skipped),
/// then wcls (vocab, dim) only when not shared. w1 = gate_proj, w2 = down_proj, w3 = up_proj.
/// </summary>
public static class Llama2cImporter
{
    const int HeaderBytes = 7 * sizeof(int);

    public sealed record Header(int Dim, int HiddenDim, int Layers, int Heads, int KvHeads, int VocabSize, bool SharedClassifier, int SeqLen)
    {
        public int HeadSize => Dim / Heads;
        public int KvDim => HeadSize * KvHeads;

        /// <summary>Number of float32 values after the header.</summary>
        public long FloatCount =>
            (long)VocabSize * Dim                         // token_embedding
            + (long)Layers * Dim                          // rms_att
            + (long)Layers * Dim * Dim                    // wq
            + 2L * Layers * KvDim * Dim                   // wk, wv
            + (long)Layers * Dim * Dim                    // wo
            + (long)Layers * Dim                          // rms_ffn
            + 3L * Layers * HiddenDim * Dim               // w1, w2, w3
            + Dim                                         // rms_final
            + (long)SeqLen * HeadSize                     // freq_cis_real + freq_cis_imag (seq_len * head_size/2 each)
            + (SharedClassifier ? 0 : (long)VocabSize * Dim); // wcls

        public long ExpectedFileBytes => HeaderBytes + 4 * FloatCount;
    }

    /// <summary>Read and check the header against the file size. Errors name the file and the bad value.</summary>
    public static Header ReadHeader(string checkpoint)
    {
        if (!File.Exists(checkpoint)) throw new PeftFormatException($"{checkpoint}: checkpoint file not found");
        long length = new FileInfo(checkpoint).Length;
        if (length < HeaderBytes)
            throw new PeftFormatException($"{checkpoint}: truncated llama2.c checkpoint ({length} bytes; the header alone needs {HeaderBytes})");
        var raw = new byte[HeaderBytes];
        using (var fs = File.OpenRead(checkpoint)) fs.ReadExactly(raw);
        int Field(int i) => BinaryPrimitives.ReadInt32LittleEndian(raw.AsSpan(4 * i));
        int dim = Field(0), hidden = Field(1), layers = Field(2), heads = Field(3), kvHeads = Field(4), vocab = Field(5), seqLen = Field(6);
        void Positive(string name, int value)
        {
            if (value <= 0) throw new PeftFormatException($"{checkpoint}: header field {name} = {value} is not a positive integer (not a llama2.c checkpoint?)");
        }
        Positive("dim", dim); Positive("hidden_dim", hidden); Positive("n_layers", layers); Positive("n_heads", heads);
        Positive("n_kv_heads", kvHeads); Positive("seq_len", seqLen);
        if (vocab == 0 || vocab == int.MinValue) throw new PeftFormatException($"{checkpoint}: header field vocab_size = {vocab} is invalid");
        if (dim % heads != 0 || (dim / heads) % 2 != 0)
            throw new PeftFormatException($"{checkpoint}: header dim = {dim} and n_heads = {heads} do not give an even integer head size");
        if (heads % kvHeads != 0)
            throw new PeftFormatException($"{checkpoint}: header n_kv_heads = {kvHeads} does not divide n_heads = {heads}");
        var header = new Header(dim, hidden, layers, heads, kvHeads, Math.Abs(vocab), vocab > 0, seqLen);
        if (length != header.ExpectedFileBytes)
            throw new PeftFormatException(
                $"{checkpoint}: file has {length} bytes but its header (dim={dim}, hidden_dim={hidden}, n_layers={layers}, n_heads={heads}, " +
                $"n_kv_heads={kvHeads}, vocab_size={vocab}, seq_len={seqLen}) needs {header.ExpectedFileBytes} " +
                (length < header.ExpectedFileBytes ? "(truncated)" : "(trailing data: not a legacy llama2.c checkpoint?)"));
        return header;
    }

    /// <summary>The HF config for a llama2.c model: rope_theta 10000, rms_norm_eps 1e-5, bos 1, eos 2, fp32.</summary>
    public static LlamaConfig ConfigFor(Header h) => new()
    {
        HiddenSize = h.Dim,
        IntermediateSize = h.HiddenDim,
        NumHiddenLayers = h.Layers,
        NumAttentionHeads = h.Heads,
        NumKeyValueHeads = h.KvHeads,
        VocabSize = h.VocabSize,
        MaxPositionEmbeddings = h.SeqLen,
        RmsNormEps = 1e-5,
        RopeTheta = 10000.0,
        TieWordEmbeddings = h.SharedClassifier,
        BosTokenId = 1,
        EosTokenIds = [2],
        HiddenAct = "silu",
        TorchDtype = "float32",
    };

    /// <summary>
    /// Convert <paramref name="checkpoint"/> + <paramref name="tokenizerModel"/> into the HF folder <paramref name="outDir"/>
    /// (written atomically: on any error nothing appears there). Returns the header read.
    /// </summary>
    public static Header Import(string checkpoint, string tokenizerModel, string outDir)
    {
        var header = ReadHeader(checkpoint);
        var tokenizer = SentencePieceTokenizer.Load(tokenizerModel);
        if (tokenizer.VocabSize > header.VocabSize)
            throw new PeftFormatException($"{tokenizerModel}: tokenizer has {tokenizer.VocabSize} tokens but the checkpoint's vocab_size is {header.VocabSize}");
        var config = ConfigFor(header);
        config.Validate(checkpoint);

        var tensors = new List<(string Name, Tensor Tensor)>();
        try
        {
            using var reader = new FloatReader(checkpoint);
            int d = header.Dim, f = header.HiddenDim, kv = header.KvDim, v = header.VocabSize;
            var embedding = reader.Read(v, d);
            tensors.Add(("model.embed_tokens.weight", embedding));
            // Per-layer arrays are stored kind by kind ((L, ...) each); read them layer by layer.
            void PerLayer(string suffix, long rows, long cols, Func<Tensor, Tensor>? transform = null)
            {
                for (int i = 0; i < header.Layers; i++)
                {
                    var t = cols == 0 ? reader.Read(rows) : reader.Read(rows, cols);
                    if (transform is not null)
                    {
                        var permuted = transform(t);
                        t.Dispose();
                        t = permuted;
                    }
                    tensors.Add(($"model.layers.{i}.{suffix}", t));
                }
            }
            PerLayer("input_layernorm.weight", d, 0);
            PerLayer("self_attn.q_proj.weight", d, d, w => RotaryPermute(w, header.Heads));
            PerLayer("self_attn.k_proj.weight", kv, d, w => RotaryPermute(w, header.KvHeads));
            PerLayer("self_attn.v_proj.weight", kv, d);
            PerLayer("self_attn.o_proj.weight", d, d);
            PerLayer("post_attention_layernorm.weight", d, 0);
            PerLayer("mlp.gate_proj.weight", f, d);  // w1
            PerLayer("mlp.down_proj.weight", d, f);  // w2
            PerLayer("mlp.up_proj.weight", f, d);    // w3
            tensors.Add(("model.norm.weight", reader.Read(d)));
            reader.Skip((long)header.SeqLen * header.HeadSize); // freq_cis_real, freq_cis_imag
            if (!header.SharedClassifier) tensors.Add(("lm_head.weight", reader.Read(v, d)));

            // HF order: per layer, then by name, matches what save_pretrained writes; safetensors sorts anyway.
            HfModelFolder.Write(outDir, config, "float32", tensors, tokenizerModel);
        }
        finally
        {
            foreach (var (_, t) in tensors) t.Dispose();
        }
        return header;
    }

    /// <summary>
    /// llama2.c rotates adjacent pairs (rows 2j, 2j+1 of a head) while HF's rotate-half pairs row j with row
    /// j + head_dim/2. HF's convert_llama_weights permutation maps one to the other:
    /// <c>w.view(n_heads, head_dim/2, 2, dim).transpose(1, 2).reshape(rows, dim)</c>.
    /// w (n_heads*head_dim, dim) -> same shape.
    /// </summary>
    public static Tensor RotaryPermute(Tensor w, int heads)
    {
        long rows = w.shape[0], cols = w.shape[1];
        long headDim = rows / heads;
        return w.view(heads, headDim / 2, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous();
    }

    /// <summary>Sequential float32 reader over the checkpoint body.</summary>
    sealed class FloatReader : IDisposable
    {
        readonly FileStream _fs;

        public FloatReader(string path)
        {
            _fs = File.OpenRead(path);
            _fs.Position = HeaderBytes;
        }

        public Tensor Read(params long[] shape)
        {
            long count = shape.Aggregate(1L, (a, b) => a * b);
            var bytes = new byte[checked(count * 4)];
            _fs.ReadExactly(bytes);
            var t = torch.empty(shape, ScalarType.Float32);
            t.bytes = bytes; // little-endian float32, as llama2.c writes it
            return t;
        }

        public void Skip(long floats) => _fs.Position += floats * 4;

        public void Dispose() => _fs.Dispose();
    }
}
