/* ckpt.h - the subcommands of qwen-ckpt, one function each (argc/argv start at the
 * subcommand name).  Each returns the process exit status: 0 success, 1 the checkpoint
 * failed a check or could not be read, 2 bad usage. */
#ifndef QW_CLI_CKPT_H
#define QW_CLI_CKPT_H

int ckpt_validate(int argc, char **argv);   /* ckpt_validate.c */
int ckpt_manifest(int argc, char **argv);
int ckpt_inspect(int argc, char **argv);
int ckpt_export_reduced(int argc, char **argv);
int ckpt_scales(int argc, char **argv);     /* ckpt_quant.c */
int ckpt_gate_up(int argc, char **argv);
int ckpt_diff(int argc, char **argv);

#define CKPT_OK 0
#define CKPT_FAILED 1
#define CKPT_USAGE 2

#endif
