"""mvp-jax: MVPTR (multi-stage vision-language pre-training) in JAX/Flax."""

import pathlib

import setuptools

ROOT = pathlib.Path(__file__).parent

# The commands users type most; each runs the module's own absl main (`python -m MODULE` works
# the same). tests/test_console_scripts.py reads this table.
CONSOLE_SCRIPTS = {
    'mvp-train': 'main:run',
    'mvp-extract': 'input_pipeline.extract_regions:main',
    'mvp-sources': 'input_pipeline.sources.build:main',
    'mvp-import-vinvl': 'input_pipeline.import_vinvl:main',
    'mvp-import-vqa': 'input_pipeline.tasks.vqa:main',
    'mvp-import-snli-ve': 'input_pipeline.tasks.snli_ve:main',
    'mvp-import-refcoco': 'input_pipeline.tasks.refcoco:main',
    'mvp-import-custom': 'input_pipeline.tasks.custom:main',
    'mvp-import-authors': 'mvp_jax.import_authors:run',
    'mvp-export': 'mvp_jax.export_hf:run',
    'mvp-predict': 'mvp_jax.inference_cli:run',
    'mvp-shapesworld': 'input_pipeline.shapesworld.build:main',
    'mvp-phrases': 'input_pipeline.phrase_extractor:main',
    'mvp-train-vocab': 'input_pipeline.train_vocab:main',
}


def requirements(name):
  """The requirement lines of `name`, following its `-r other.txt` includes."""
  out = []
  for line in (ROOT / name).read_text().splitlines():
    line = line.strip()
    if line.startswith('-r'):
      out += requirements(line[2:].strip())
    elif line and not line.startswith('#'):
      out.append(line)
  return out


setuptools.setup(
    name='mvp-jax',
    version='0.1.0',
    description='MVPTR vision-language pre-training in JAX/Flax, with exact parity to the '
                'authors\' PyTorch model.',
    long_description=(ROOT / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['mvp_jax', 'mvp_jax.*', 'input_pipeline',
                                               'input_pipeline.*', 'configs']),
    py_modules=['main'],  # the trainer's command line (mvp-train)
    package_data={'mvp_jax.vision': ['*.txt']},
    entry_points={'console_scripts': [f'{name} = {target}'
                                      for name, target in CONSOLE_SCRIPTS.items()]},
    python_requires='>=3.10',
    install_requires=requirements('requirements.txt'),
    extras_require={'sources': requirements('requirements-sources.txt'),
                    'test': requirements('requirements-test.txt')},
    license='Apache-2.0',
)
