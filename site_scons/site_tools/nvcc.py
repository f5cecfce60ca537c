"""SCons tool for CUDA C: builds .cu objects with nvcc for Hopper (sm_90a) and Ampere
(sm_80), passing the host flags through -Xcompiler, and lets .cu files track their
#includes with the C scanner."""
import os
import SCons.Tool
import SCons.Scanner.C

ARCHS = ['-gencode', 'arch=compute_90a,code=sm_90a',
         '-gencode', 'arch=compute_80,code=sm_80']


def find_nvcc(env):
    """nvcc on PATH, else under $CUDA_HOME or /usr/local/cuda."""
    candidates = [os.path.join(d, 'bin', 'nvcc') for d in
                  (os.environ.get('CUDA_HOME', ''), '/usr/local/cuda') if d]
    return env.WhereIs('nvcc') or next((c for c in candidates if os.access(c, os.X_OK)), None)


def generate(env):
    nvcc = find_nvcc(env)
    cuda_home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    env['NVCC'] = nvcc
    env['CUDA_HOME'] = cuda_home
    env['NVCCFLAGS'] = ARCHS + ['-O3', '-lineinfo', '-std=c++17', '--Werror', 'all-warnings',
                                '-Xcompiler', '-Wall,-Wextra,-Werror,-Wno-unused-parameter']
    env['NVCCCOM'] = '$NVCC -o $TARGET -c $NVCCFLAGS $_CPPINCFLAGS $_CPPDEFFLAGS $SOURCES'
    static_obj, _ = SCons.Tool.createObjBuilders(env)
    static_obj.add_action('.cu', SCons.Action.Action('$NVCCCOM', '$NVCCCOMSTR'))
    static_obj.add_emitter('.cu', SCons.Defaults.StaticObjectEmitter)
    SCons.Tool.SourceFileScanner.add_scanner('.cu', SCons.Scanner.C.CScanner())
    env.Append(CPPPATH=[os.path.join(cuda_home, 'include')],
               LIBPATH=[os.path.join(cuda_home, 'lib64')])
    env['CUDA_LIBS'] = ['cublasLt', 'cublas', 'nccl', 'cudart_static', 'dl', 'rt', 'pthread', 'stdc++']


def exists(env):
    return find_nvcc(env)
