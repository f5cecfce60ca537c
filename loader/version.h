/* version.h - the version every program of qwen-vl reports (--version). */
#ifndef QW_LOADER_VERSION_H
#define QW_LOADER_VERSION_H

#define QW_VERSION "0.1"

#endif
