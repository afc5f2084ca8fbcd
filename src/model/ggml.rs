//! ggml's tensor data: its types, IEEE half precision, the block dequantisers, and llama.cpp's
//! order of the rotary rows of q and k.

/// ggml's tensor types that [`dequantize`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    /// From ggml's type number; None for types we do not read.
    pub fn from_id(id: u32) -> Option<Self> {
        const ALL: [GgmlType; 11] = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Bf16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ];
        ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's type number.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
        }
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 2 + 16),
            GgmlType::Q4_1 => (32, 2 + 2 + 16),
            GgmlType::Q5_0 => (32, 2 + 4 + 16),
            GgmlType::Q5_1 => (32, 2 + 2 + 4 + 16),
            GgmlType::Q8_0 => (32, 2 + 32),
            GgmlType::Q4K => (256, 2 + 2 + 12 + 128),
            GgmlType::Q5K => (256, 2 + 2 + 12 + 32 + 128),
            GgmlType::Q6K => (256, 128 + 64 + 16 + 2),
        }
    }
}

/// IEEE half precision to f32 (subnormals, infinities and NaN included).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let frac = (bits & 0x3ff) as u32;
    let magnitude = match (exp, frac) {
        (0, 0) => 0,
        (0, _) => {
            let v = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => 0x7f80_0000 | (frac << 13),
        _ => ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(sign | magnitude)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K or Q5_K block's 12 scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4)) as f32, ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32)
    }
}

/// Dequantises whole blocks of `kind` (as laid out by ggml) into f32.
pub fn dequantize(kind: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let (per_block, block_bytes) = kind.block();
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * per_block);
    for b in bytes.chunks_exact(block_bytes) {
        match kind {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(f16_at(b, 0)),
            GgmlType::Bf16 => out.push(f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
            // 32 values: scale d, then 16 bytes whose low nibbles are values 0..16 and high
            // nibbles values 16..32; Q4_0 is centred at 8, Q4_1 adds a minimum m.
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let d = f16_at(b, 0);
                let (m, qs) = if kind == GgmlType::Q4_1 { (f16_at(b, 2), &b[4..]) } else { (-8.0 * d, &b[2..]) };
                out.extend(qs.iter().map(|q| (q & 0xf) as f32 * d + m));
                out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
            }
            // Q4_0/Q4_1's layout with a fifth bit per value in 4 bytes (bit j for value j);
            // Q5_0 is centred at 16, Q5_1 adds a minimum m.
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let d = f16_at(b, 0);
                let (m, rest) = if kind == GgmlType::Q5_1 { (f16_at(b, 2), &b[4..]) } else { (-16.0 * d, &b[2..]) };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..];
                let high = |j: usize| (((qh >> j) & 1) << 4) as u8;
                out.extend(qs.iter().enumerate().map(|(j, q)| ((q & 0xf) | high(j)) as f32 * d + m));
                out.extend(qs.iter().enumerate().map(|(j, q)| ((q >> 4) | high(j + 16)) as f32 * d + m));
            }
            GgmlType::Q8_0 => {
                let d = f16_at(b, 0);
                out.extend(b[2..].iter().map(|&q| q as i8 as f32 * d));
            }
            // 256 values in 8 sub-blocks of 32, each with a 6-bit scale and min: x = d*sc*q - dmin*m.
            GgmlType::Q4K | GgmlType::Q5K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let (qh, qs) = if kind == GgmlType::Q5K { (Some(&b[16..48]), &b[48..]) } else { (None, &b[16..]) };
                for chunk in 0..4 {
                    let q = &qs[32 * chunk..32 * chunk + 32];
                    for half in 0..2 {
                        let (sc, m) = scale_min_k4(2 * chunk + half, scales);
                        let bit = 2 * chunk + half; // Q5_K: the fifth bit of this sub-block
                        out.extend(q.iter().enumerate().map(|(l, &byte)| {
                            let low = if half == 0 { byte & 0xf } else { byte >> 4 };
                            let high = qh.map_or(0, |h| ((h[l] >> bit) & 1) << 4);
                            d * sc * (low | high) as f32 - dmin * m
                        }));
                    }
                }
            }
            // 256 values of 6 bits: 4 low bits in ql, 2 high bits in qh, 16 signed 8-bit scales.
            GgmlType::Q6K => {
                let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], f16_at(b, 208));
                let mut y = [0f32; 256];
                for n in 0..2 {
                    let (ql, qh, sc, y) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..], &mut y[128 * n..]);
                    for l in 0..32 {
                        let is = l / 16;
                        let q = |low: u8, shift: u8| ((low | (((qh[l] >> shift) & 3) << 4)) as i32 - 32) as f32;
                        y[l] = d * sc[is] as i8 as f32 * q(ql[l] & 0xf, 0);
                        y[l + 32] = d * sc[is + 2] as i8 as f32 * q(ql[l + 32] & 0xf, 2);
                        y[l + 64] = d * sc[is + 4] as i8 as f32 * q(ql[l] >> 4, 4);
                        y[l + 96] = d * sc[is + 6] as i8 as f32 * q(ql[l + 32] >> 4, 6);
                    }
                }
                out.extend(y);
            }
        }
    }
    out
}

/// Undoes llama.cpp's reordering of a q or k projection (rows = `heads` x head_dim, `cols`
/// each): in each head it stores the rotary pairs interleaved (0, d/2, 1, d/2+1, ...); Hugging
/// Face keeps the two halves apart.
pub fn unpermute_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    reorder_rotary_rows(w, heads, cols, false)
}

/// llama.cpp's row order of a Hugging Face q or k projection: the inverse of [`unpermute_rows`].
pub fn permute_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    reorder_rotary_rows(w, heads, cols, true)
}

fn reorder_rotary_rows(w: &[f32], heads: usize, cols: usize, to_llama_cpp: bool) -> Vec<f32> {
    let rows = w.len() / cols;
    let half = rows / heads / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for pair in 0..2 {
                let interleaved = h * 2 * half + 2 * i + pair;
                let split = h * 2 * half + pair * half + i;
                let (to, from) = if to_llama_cpp { (interleaved, split) } else { (split, interleaved) };
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}
