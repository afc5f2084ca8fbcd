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

#[cfg(test)]
mod tests {
    use super::*;

    fn f16(x: f32) -> [u8; 2] {
        // Exact for the small powers of two and halves used here.
        let bits: u16 = match x {
            0.0 => 0,
            0.5 => 0x3800,
            1.0 => 0x3c00,
            2.0 => 0x4000,
            -1.0 => 0xbc00,
            0.25 => 0x3400,
            _ => panic!("no f16 literal for {x}"),
        };
        bits.to_le_bytes()
    }

    #[test]
    fn half_precision_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24)); // the smallest subnormal
        assert!(f16_to_f32(0x7c00).is_infinite() && f16_to_f32(0x7e00).is_nan());
        assert_eq!(dequantize(GgmlType::Bf16, &0x3fc0u16.to_le_bytes()), [1.5]);
    }

    #[test]
    fn q4_0_and_q4_1_blocks() {
        // Byte j holds value j (low nibble) and value j + 16 (high nibble).
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let q4_0 = [f16(0.5).as_slice(), &qs].concat();
        let x = dequantize(GgmlType::Q4_0, &q4_0);
        assert_eq!(x.len(), 32);
        assert_eq!((x[0], x[8], x[15]), (-4.0, 0.0, 3.5)); // (q - 8) * 0.5
        assert_eq!((x[16], x[31]), (3.5, -4.0));
        let q4_1 = [f16(2.0).as_slice(), &f16(-1.0), &qs].concat();
        let x = dequantize(GgmlType::Q4_1, &q4_1);
        assert_eq!((x[0], x[15], x[16], x[31]), (-1.0, 29.0, 29.0, -1.0)); // q * 2 - 1
    }

    #[test]
    fn q5_0_and_q5_1_blocks() {
        // Byte j holds the low 4 bits of values j and j + 16; bit j of qh is value j's fifth bit.
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let qh: u32 = (1 << 0) | (1 << 15) | (1 << 16); // values 0, 15 and 16 get +16
        let q5_0 = [f16(0.5).as_slice(), &qh.to_le_bytes(), &qs].concat();
        let x = dequantize(GgmlType::Q5_0, &q5_0);
        assert_eq!(x.len(), 32);
        assert_eq!((x[0], x[1], x[15]), (0.0, -7.5, 7.5)); // (q - 16) * 0.5: q = 16, 1, 31
        assert_eq!((x[16], x[17], x[31]), (7.5, -1.0, -8.0)); // q = 31, 14, 0
        let q5_1 = [f16(2.0).as_slice(), &f16(-1.0), &qh.to_le_bytes(), &qs].concat();
        let x = dequantize(GgmlType::Q5_1, &q5_1);
        assert_eq!((x[0], x[1], x[16], x[31]), (31.0, 1.0, 61.0, -1.0)); // q * 2 - 1
    }

    #[test]
    fn q8_0_block() {
        let qs: Vec<u8> = (0..32i8).map(|i| (i - 16) as u8).collect();
        let x = dequantize(GgmlType::Q8_0, &[f16(0.25).as_slice(), &qs].concat());
        assert_eq!((x[0], x[16], x[31]), (-4.0, 0.0, 3.75));
    }

    #[test]
    fn q4_k_and_q5_k_blocks() {
        // Scales: sub-blocks 0..4 take the low 6 bits of bytes 0..4 (scale) and 4..8 (min);
        // sub-blocks 4..8 take nibbles of bytes 8..12 plus the top 2 bits of bytes 0..8.
        let mut scales = [0u8; 12];
        scales[0] = 3; // sub-block 0: scale 3
        scales[4] = 5; // sub-block 0: min 5
        scales[8] = 0x21; // sub-block 4: scale 1 | (scales[0] >> 6) << 4 = 1, min 2
        scales[1] = 2 | (1 << 6); // sub-block 1: scale 2; sub-block 5 gets 1 << 4 in its scale
        scales[9] = 0x07; // sub-block 5: scale 7 | 16 = 23, min 0
        let mut qs = [0u8; 128];
        qs[0] = 0x9a; // value 0 (sub-block 0): 10; value 32 (sub-block 1): 9
        qs[64] = 0x04; // value 128 (sub-block 4): 4; value 160 (sub-block 5): 0
        qs[65] = 0x30; // value 161 (sub-block 5): 3
        let head = [f16(1.0).as_slice(), &f16(0.5)].concat();
        let x = dequantize(GgmlType::Q4K, &[head.as_slice(), &scales, &qs].concat());
        assert_eq!(x.len(), 256);
        assert_eq!(x[0], 3.0 * 10.0 - 0.5 * 5.0);
        assert_eq!(x[1], -2.5); // q 0
        assert_eq!(x[32], 2.0 * 9.0);
        assert_eq!(x[128], 1.0 * 4.0 - 0.5 * 2.0);
        assert_eq!((x[160], x[161]), (0.0, 23.0 * 3.0));
        // Q5_K: bit (2 * chunk + half) of qh[l] is the fifth bit of value l of that sub-block.
        let mut qh = [0u8; 32];
        qh[0] = 0b1; // value 0 gets +16
        qh[1] = 0b10_0000; // sub-block 5 (chunk 2, high half), value 161: +16
        let x = dequantize(GgmlType::Q5K, &[head.as_slice(), &scales, &qh, &qs].concat());
        assert_eq!(x[0], 3.0 * 26.0 - 2.5);
        assert_eq!(x[32], 18.0);
        assert_eq!(x[161], 23.0 * 19.0);
    }

    #[test]
    fn q6_k_block() {
        let (mut ql, mut qh, mut sc) = ([0u8; 128], [0u8; 64], [0u8; 16]);
        for (i, s) in sc.iter_mut().enumerate() {
            *s = (i as i8 - 4) as u8; // scales -4..12
        }
        ql[0] = 0x21; // value 0: low 1, value 64: low 2
        qh[0] = 0b11_00_00_10; // value 0: high 2 -> 33; value 32: 0; value 64: 0; value 96: 3
        ql[32] = 0xf0; // value 32: low 0, value 96: low 15
        ql[64] = 0x05; // second half, value 128: low 5, high 0
        let d = f16(0.5);
        let x = dequantize(GgmlType::Q6K, &[ql.as_slice(), &qh, &sc, &d].concat());
        assert_eq!(x.len(), 256);
        assert_eq!(x[0], 0.5 * -4.0 * (33 - 32) as f32); // sc[0] = -4
        assert_eq!(x[32], 0.5 * -2.0 * -32.0); // sc[2] = -2, q = 0 - 32
        assert_eq!(x[64], 0.5 * 0.0 * (2 - 32) as f32); // sc[4] = 0
        assert_eq!(x[96], 0.5 * 2.0 * (63 - 32) as f32); // sc[6] = 2, q = 15 | 3 << 4
        assert_eq!(x[128], 0.5 * 4.0 * (5 - 32) as f32); // sc[8] = 4
    }

    #[test]
    fn unpermute_restores_split_halves() {
        // One head of dim 4 with 1 column: llama.cpp stores rows (0, 2, 1, 3).
        assert_eq!(unpermute_rows(&[0.0, 2.0, 1.0, 3.0], 1, 1), [0.0, 1.0, 2.0, 3.0]);
        // Two heads, 2 columns each.
        let stored = [0., 0., 2., 2., 1., 1., 3., 3., 4., 4., 6., 6., 5., 5., 7., 7.];
        let hf: Vec<f32> = (0..8).flat_map(|i| [i as f32; 2]).collect();
        assert_eq!(unpermute_rows(&stored, 2, 2), hf);
        assert_eq!(permute_rows(&hf, 2, 2), stored);
    }
}
