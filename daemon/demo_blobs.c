/* demo_blobs.c - the Qwen3 tokenizer files inside the binary, for the demo model (demo.c):
 * tokenizer.json and tokenizer_config.json of tests/fixtures/tokenizer/qwen3/, gzipped by
 * the build (daemon/SConscript: level 9, no file name, mtime 0, so the bytes depend only on
 * the files) and pulled into .rodata with .incbin.  The build passes each .gz file's path
 * (relative to the top of the tree, where the compiler runs) as QW_DEMO_TOKENIZER_JSON_GZ and
 * QW_DEMO_TOKENIZER_CONFIG_GZ, and makes this object depend on the files, so a changed file
 * rebuilds it.  Each blob is the symbol NAME (its first byte) up to NAME_end (one past its
 * last byte).
 */
#if !defined(QW_DEMO_TOKENIZER_JSON_GZ) || !defined(QW_DEMO_TOKENIZER_CONFIG_GZ)
#error "daemon/SConscript defines the paths of the gzipped tokenizer files"
#endif

#define QW_BLOB(sym, path)                                      \
	__asm__(".pushsection .rodata\n"                        \
		"\t.balign 16\n"                                \
		"\t.globl " #sym "\n"                           \
		"\t.type " #sym ", @object\n"                   \
		#sym ":\n"                                      \
		"\t.incbin \"" path "\"\n"                      \
		"\t.globl " #sym "_end\n"                       \
		#sym "_end:\n"                                  \
		"\t.size " #sym ", " #sym "_end - " #sym "\n"   \
		"\t.popsection\n")

QW_BLOB(qw_demo_tokenizer_json_gz, QW_DEMO_TOKENIZER_JSON_GZ);
QW_BLOB(qw_demo_tokenizer_config_gz, QW_DEMO_TOKENIZER_CONFIG_GZ);

/* what the blobs are to C (demo.c declares the same) */
extern const unsigned char qw_demo_tokenizer_json_gz[], qw_demo_tokenizer_json_gz_end[];
extern const unsigned char qw_demo_tokenizer_config_gz[], qw_demo_tokenizer_config_gz_end[];
