from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import lladauni.agent as lladauni_agent
import lladauni.kernels.capability as kernels_capability
import lladauni.model_core as model_core
import lladauni.tools.langchain_tools as langchain_tools


# model_core's public names, by the module each comes from. The test pins the package's __all__ to
# exactly these (sorted), and each name to that module's object.
MODEL_CORE_API = {
    "backbone": "BackboneOutput KVCache LLaDA2Backbone",
    "checkpoint": "CheckpointError load_backbone resolve_checkpoint save_backbone",
    "config": "BackboneConfig ConfigError",
    "decoder": "DiTConfig ImageDecoder",
    "generation.prompts": "ChatMessage ImageCodes",
    "image_config": "ImageTokenizerConfig PreprocessorConfig",
    "image_tokenizer": "ImageTokenizer ImageTokens",
    "layers.attention": "AttentionMask",
    "pipeline": "GenerationError ImageResult InterleavedResult LLaDAUni OutOfWorldError TextResult",
    "tokenizer": "SpecialTokens TextTokenizer TokenizerError",
}


def test_public_surface_is_pinned():
    assert model_core.__all__ == sorted(name for names in MODEL_CORE_API.values() for name in names.split())
    for module, names in MODEL_CORE_API.items():
        source = importlib.import_module(f"lladauni.model_core.{module}")
        for name in names.split():
            assert getattr(model_core, name) is getattr(source, name), name
    assert lladauni_agent.__all__ == [
        "Agent", "AgentContext", "Backend", "BackendError", "GRAPHS", "HTTPBackend", "LocalBackend", "RunResult",
        "ScriptedBackend", "build_graph",
    ]
    assert kernels_capability.__all__ == ["HAS_FLASH_ATTN", "HAS_TRITON", "available", "can_launch", "interpreting"]
    assert "as_langchain_tools" in langchain_tools.__all__


def test_model_core_imports_without_agent_or_server_dependencies():
    """The device image has torch, triton, transformers, safetensors, numpy, pillow only."""
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {'pydantic', 'langgraph', 'diffusers', 'fastapi', 'mcp', 'yaml', 'langchain'}:
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import lladauni.model_core, lladauni.model_core.testing, lladauni.kernels.capability
        from lladauni.model_core import load_backbone, TextTokenizer
        assert 'transformers' not in sys.modules, 'transformers must load lazily'
        print('ok')
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
