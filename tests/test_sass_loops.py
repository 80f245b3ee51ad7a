"""benchmarks/sass_loops.py's reading of SASS, on hand-written listings in cuobjdump's format
(compiling real kernels needs nvcc and cuobjdump, which the benchmark itself runs)."""
import importlib.util
import pathlib

spec = importlib.util.spec_from_file_location(
    "sass_loops", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "sass_loops.py")
sass_loops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sass_loops)


def listing(name, body):
    lines = [f"\t\tFunction : {name}", "\t.headerflags\t@\"EF_CUDA_SM90\""]
    for i, text in enumerate(body):
        lines.append(f"        /*{i * 16:04x}*/                   {text} ;   /* 0x0000000000000000 */")
        lines.append("                                                              /* 0x0000000000000000 */")
    return "\n".join(lines)


SERIAL = [  # one element per trip: its second load waits behind the first element's store
    "MOV R1, c[0x0][0x28]",
    "LDG.E R2, desc[UR4][R4.64]",
    "FMUL R2, R2, R3",
    "STG.E desc[UR4][R6.64], R2",
    "@!P0 LDG.E.CONSTANT R8, desc[UR4][R10.64]",
    "FADD R8, R8, R2",
    "STG.E desc[UR4][R6.64+0x80], R8",
    "@P1 BRA 0x10",
    "EXIT",
]
BATCHED = [  # every load ahead of every store, then a forward branch and a loop without stores
    "LDG.E R2, desc[UR4][R4.64]",
    "LDG.E.CONSTANT R8, desc[UR4][R10.64]",
    "STG.E desc[UR4][R6.64], R2",
    "STG.E desc[UR4][R6.64+0x80], R8",
    "@P0 BRA 0x0",
    "@P1 BRA 0x70",
    "LDG.E R2, desc[UR4][R4.64]",
    "@P2 BRA 0x60",
    "EXIT",
]


def test_functions_split_a_listing_by_kernel():
    text = listing("_Z6serialv", SERIAL) + "\n" + listing("_Z7batchedv", BATCHED)
    funcs = sass_loops.functions(text)
    assert list(funcs) == ["_Z6serialv", "_Z7batchedv"]
    assert funcs["_Z6serialv"][1] == (0x10, "LDG.E R2, desc[UR4][R4.64]")
    assert len(funcs["_Z7batchedv"]) == len(BATCHED)


def test_a_load_after_a_store_is_late():
    (loop,) = sass_loops.storing_loops(sass_loops.functions(listing("k", SERIAL))["k"])
    assert loop == {"range": "0x10-0x70", "size": 7, "ldg": 2, "stg": 2, "late": 1}


def test_loads_ahead_of_stores_are_not_late_and_storeless_loops_are_skipped():
    loops = sass_loops.storing_loops(sass_loops.functions(listing("k", BATCHED))["k"])
    assert loops == [{"range": "0x0-0x40", "size": 5, "ldg": 2, "stg": 2, "late": 0}]


def test_short_names_drop_namespaces_and_parameters():
    name = ("void hessalign::rows_kernel<hessalign::HvpSOp<c10::BFloat16, float> >"
            "(long, hessalign::HvpSOp<c10::BFloat16, float>)")
    assert sass_loops.short(name) == "rows_kernel<HvpSOp<BFloat16, float> >"
