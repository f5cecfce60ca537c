/* dtype.h - element types of checkpoint tensors, as safetensors names them.
 *
 * Owns: qw_dtype, its names and sizes, and scalar conversions between the stored
 * floating formats (bf16, f16, f8 e4m3fn) and fp32.  Conversions take and return plain
 * integers, so callers read unaligned checkpoint bytes with memcpy, never by casting.
 */
#ifndef QW_LOADER_DTYPE_H
#define QW_LOADER_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qw_dtype {
	QW_DT_INVALID = 0,
	QW_DT_BOOL, QW_DT_U8, QW_DT_I8, QW_DT_F8_E4M3, QW_DT_F8_E5M2,
	QW_DT_I16, QW_DT_U16, QW_DT_F16, QW_DT_BF16,
	QW_DT_I32, QW_DT_U32, QW_DT_F32,
	QW_DT_I64, QW_DT_U64, QW_DT_F64,
	QW_DT_COUNT_
} qw_dtype;

/* Parses a safetensors dtype name ("BF16", "F8_E4M3", ...); QW_DT_INVALID if unknown. */
qw_dtype qw_dtype_from_name(const char *name);
const char *qw_dtype_name(qw_dtype dt);
size_t qw_dtype_size(qw_dtype dt);          /* bytes per element; 0 for INVALID */
bool qw_dtype_is_float(qw_dtype dt);        /* a weight format the model can compute with */

float qw_bf16_to_f32(uint16_t h);
uint16_t qw_f32_to_bf16(float f);           /* round to nearest even; NaN stays NaN */
float qw_f16_to_f32(uint16_t h);
float qw_f8e4m3_to_f32(uint8_t v);          /* float8_e4m3fn: no infinities, 0x7f/0xff NaN */
uint8_t qw_f32_to_f8e4m3(float f);          /* nearest, ties to even; saturates at +-448 */
float qw_e2m1_to_f32(uint8_t nibble);       /* FP4 e2m1 (low 4 bits): +-{0,.5,1,1.5,2,3,4,6} */

#ifdef __cplusplus
}
#endif

#endif
