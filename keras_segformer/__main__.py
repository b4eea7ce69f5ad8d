import sys

from keras_segformer.cli import main

sys.exit(main())
