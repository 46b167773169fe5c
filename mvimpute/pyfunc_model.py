"""The model file of a logged mvimpute pyfunc (MLflow models from code): MLflow runs it when it
loads the model. Not imported by the library."""

from mvimpute.tracking import set_pyfunc_model

set_pyfunc_model()
